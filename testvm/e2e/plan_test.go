package e2e_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/e2e"
)

// TestVMDebianIMANgv2: the Debian 6.1 kernel booted with ima_template=ima-ngv2 and no
// ima_hash= (Debian's CONFIG_IMA_DEFAULT_HASH is sha256): `imakexec kexec --dry-run` must
// name the real template and hash, read from the kernel's own log, and the hook of the
// next kernel must prove the kexec window (rebuilt in ima-ngv2: the kernel carries
// nothing).
func TestVMDebianIMANgv2(t *testing.T) {
	kernel := testvm.Require(t)
	sc := scenario("debian-ima-ngv2", kernel, 1)
	sc.Append = "ima_template=ima-ngv2"
	sc.Config.DryRun = true
	run := execute(t, sc)
	b, ok := run.Gens[0].Blob("kexec-plan.json")
	if !ok {
		t.Fatal("the guest sent no kexec-plan.json")
	}
	var plan initramfs.KexecReport
	if err := json.Unmarshal(b, &plan); err != nil {
		t.Fatalf("kexec-plan.json: %v", err)
	}
	ok1 := plan.OldKernel
	t.Logf("plan: ima_hash %s (%s: %s), templates %q, carries %q (%s), measures kexec %v, warnings %q",
		ok1.IMAHash, ok1.IMAHashSource, ok1.IMAHashFrom, ok1.Templates, ok1.IMAKexec, ok1.IMAKexecFrom, ok1.MeasuresKexec, plan.Warnings)
	if ok1.IMAHash != "sha256" || ok1.IMAHashSource != "log" || !slices.Contains(ok1.Templates, "ima-ngv2") {
		t.Errorf("plan: ima_hash %s from %s, templates %q; want sha256 from the log and ima-ngv2", ok1.IMAHash, ok1.IMAHashSource, ok1.Templates)
	}
	for _, w := range plan.Warnings {
		if strings.Contains(w, "unknown") {
			t.Errorf("plan warns %q", w)
		}
	}
	j := hostJoin(t, run)
	checkLeadCommands(t, run, j)
	// The hook proved the window with rebuilt ima-ngv2 records: a reconstructed segment.
	segs, _, err := e2e.ReadStore(run.Last().StoreFiles("store/"))
	if err != nil {
		t.Fatal(err)
	}
	var rebuilt []serialize.Record
	for _, s := range segs {
		if s.Source == "reconstructed" {
			rebuilt = append(rebuilt, s.Recs...)
		}
	}
	if len(rebuilt) == 0 {
		t.Fatal("no reconstructed kexec-window segment in the store")
	}
	for _, r := range rebuilt {
		if n := e2e.Name(&r); r.Template != "ima-ngv2" && n != "kexec-cmdline" {
			t.Errorf("rebuilt record %s has template %s, want ima-ngv2", n, r.Template)
		}
	}
	t.Logf("window rebuilt and proven: %q", e2e.RecordNames(rebuilt))
}
