package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// keylimeAccepts is what Keylime's verifier checks of an ima-ng / ima-buf entry under a
// runtime policy (keylime/ima/ima.py _validate_ima_ng): the name matches an exclude regex,
// or the entry's digest is listed under its name.
func keylimeAccepts(p *keylimePolicy, line string) bool {
	f := strings.Fields(line)
	if len(f) < 5 {
		return false
	}
	digest, name := f[3], f[4]
	if i := strings.LastIndexByte(digest, ':'); i >= 0 {
		digest = digest[i+1:]
	}
	for _, x := range p.Excludes {
		if regexp.MustCompile(x).MatchString(name) {
			return true
		}
	}
	table := p.Digests
	if f[2] == "ima-buf" {
		table = p.IMABuf
	}
	return slices.Contains(table[name], digest)
}

// The runtime policy of `imakexec kexec --keylime-excludes` covers every record the kexec
// added to the model kernel's list (kernel image, memfd initrd, kexec-cmdline, kexec_load,
// and kexec_execute at the jump) and nothing else (the files and the boot_aggregate
// measured before stay for the host's own policy): after a load (--load-only) by digest
// for the initrd and command line, before it (--dry-run) by name.
func TestKeylimeExcludesCoverKexecRecords(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
	store := filepath.Join(t.TempDir(), "store")
	paths := handover.Paths{Securityfs: env.Securityfs, Proc: env.Proc}
	for i := range 5 {
		env.Kernel.Exec(fmt.Sprintf("/usr/bin/t%d", i), []byte{byte(i)})
	}
	if _, err := handover.Rejoin(context.Background(), handover.RejoinOptions{Paths: paths, StoreDir: store, TPM: env.TPM}); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte("K"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	policyOf := func(dry, loadOnly bool) *keylimePolicy {
		var tr []string
		steps := handover.NewKexecSteps(paths, store, "unix:"+env.TPMSocket)
		defer steps.Close()
		o := initramfs.KexecOptions{Kernel: kernel, Cmdline: "console=ttyS0", Store: store, Proc: env.Proc, DryRun: dry, LoadOnly: loadOnly}
		rep, err := initramfs.RunKexec(context.Background(), o, steps, &modelKexec{k: env.Kernel, tr: &tr})
		if err != nil {
			t.Fatal(err)
		}
		p := keylimeExcludes(rep)
		// It must be what Keylime's schema requires: every top-level key present.
		b, _ := json.Marshal(p)
		var m map[string]any
		json.Unmarshal(b, &m)
		for _, k := range []string{"meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf", "verification-keys"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("policy has no %q: %s", k, b)
			}
		}
		return p
	}
	dry := policyOf(true, false)
	if !slices.Contains(dry.Excludes, "^memfd:imakexec-initrd$") || len(dry.Digests) != 1 {
		t.Fatalf("dry-run policy: %+v", dry)
	}
	loaded := policyOf(false, true)
	if slices.Contains(loaded.Excludes, "^kexec-cmdline$") || len(loaded.IMABuf["kexec-cmdline"]) != 1 || len(loaded.Digests["memfd:imakexec-initrd"]) != 1 {
		t.Fatalf("policy after the load: %+v", loaded)
	}
	if _, err := env.Kernel.Suspend(); err != nil { // the reboot notifiers: kexec_execute
		t.Fatal(err)
	}
	list, err := os.ReadFile(filepath.Join(env.IMADir, "ascii_runtime_measurements"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(line)
		name := f[4]
		kexecs := name == "kexec-cmdline" || name == "kexec_load" || name == "kexec_execute" || strings.HasPrefix(name, "memfd:") || strings.HasSuffix(name, "/vmlinuz")
		for what, p := range map[string]*keylimePolicy{"dry-run": dry, "load-only": loaded} {
			if got := keylimeAccepts(p, line); got != kexecs {
				t.Errorf("%s policy: accepted=%v for %q", what, got, line)
			}
		}
		if kexecs {
			seen[strings.TrimPrefix(name, filepath.Dir(kernel)+"/")] = true
		}
	}
	for _, want := range []string{"vmlinuz", "memfd:imakexec-initrd", "kexec-cmdline", "kexec_load", "kexec_execute"} {
		if !seen[want] {
			t.Errorf("the kernel's list has no %s record (the test does not exercise it): %v", want, seen)
		}
	}
}

// verify --json says, beside verified, whether Keylime's verifier can parse the log: yes for
// the default policy's ima-ng records on PCR 10, no (naming PCR 11) when a policy rule
// measures into PCR 11, while the log still verifies.
func TestVerifyJSONKeylimeCompat(t *testing.T) {
	for _, tc := range []struct {
		policy string
		compat bool
	}{
		{"", true},
		{"measure func=BPRM_CHECK mask=MAY_EXEC\nmeasure func=FILE_CHECK mask=MAY_READ uid=0 pcr=11\n", false},
	} {
		t.Run(fmt.Sprintf("compatible=%v", tc.compat), func(t *testing.T) { testVerifyJSONKeylime(t, tc.policy, tc.compat) })
	}
}

// testVerifyJSONKeylime runs one case (one model kernel: the TPM simulator is one per
// process).
func testVerifyJSONKeylime(t *testing.T, policy string, compat bool) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72, Policy: policy})
	for i := range 4 {
		env.Kernel.Exec(fmt.Sprintf("/usr/bin/t%d", i), []byte{byte(i)})
		env.Kernel.Read(fmt.Sprintf("/etc/c%d", i), []byte{byte(i)})
	}
	store := filepath.Join(t.TempDir(), "store")
	g := []string{"--securityfs", env.Securityfs, "--tpm", "unix:" + env.TPMSocket}
	var out, errb bytes.Buffer
	if code := run(context.Background(), &Env{Stdout: &out, Stderr: &errb}, append(g, "rejoin", "--store", store, "--proc", env.Proc)); code != 0 {
		t.Fatalf("rejoin: %d %s", code, errb.String())
	}
	out.Reset()
	if code := run(context.Background(), &Env{Stdout: &out, Stderr: &errb}, append(g, "verify", "--json", "--store", store, "--proc", env.Proc)); code != 0 {
		t.Fatalf("verify: %d %s %s", code, out.String(), errb.String())
	}
	var v struct {
		Verified bool `json:"verified"`
		Keylime  struct {
			Compatible *bool    `json:"compatible"`
			Reasons    []string `json:"reasons"`
		} `json:"keylime"`
	}
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	if !v.Verified || v.Keylime.Compatible == nil || *v.Keylime.Compatible != compat {
		t.Fatalf("policy %q: %s", policy, out.String())
	}
	if !compat && (len(v.Keylime.Reasons) != 1 || !strings.Contains(v.Keylime.Reasons[0], "PCR 11 (4 records")) {
		t.Fatalf("reasons %q, want one naming PCR 11's 4 records", v.Keylime.Reasons)
	}
}
