package kmodel_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

// newKernel boots a model kernel without FUSE. The TPM simulator is one per process: close
// a kernel before booting the next.
func newKernel(t *testing.T, cfg kmodel.Config) *kmodel.Kernel {
	t.Helper()
	k, err := kmodel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// withKernel runs f on a fresh model kernel and closes it.
func withKernel(t *testing.T, cfg kmodel.Config, f func(k *kmodel.Kernel)) {
	t.Helper()
	k, err := kmodel.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	f(k)
}

// criticalData returns the buffer of every ima-buf record named name in the list.
func criticalData(t *testing.T, recs []serialize.Record, name string) []string {
	t.Helper()
	var out []string
	for _, r := range recs {
		if r.Template != "ima-buf" {
			continue
		}
		f := mustFields(t, r)
		if serialize.EventName(&r, le) == name {
			out = append(out, string(f[2].Data))
		}
	}
	return out
}

// TestKexecPayloadCountsRestored: from 7.2 the kexec_load/kexec_execute payloads count
// BINARY_FULL, which ima_restore_measurement_entry increments too (ima_add_digest_entry),
// so the second kernel's count includes the records it restored.
func TestKexecPayloadCountsRestored(t *testing.T) {
	k := newKernel(t, kmodel.Config{Profile: kmodel.Profile72})
	k.Synthetic(5)
	if err := k.KexecLoad([]byte("k"), []byte("i"), "c"); err != nil {
		t.Fatal(err)
	}
	res, err := k.KexecExecuteResult()
	if err != nil {
		t.Fatal(err)
	}
	if res.Restored == 0 {
		t.Fatalf("nothing restored: %+v", res)
	}
	before := len(k.List())
	if err := k.KexecLoad([]byte("k2"), []byte("i2"), "c2"); err != nil {
		t.Fatal(err)
	}
	loads := criticalData(t, k.List(), "kexec_load")
	if len(loads) != 2 { // the restored one of the first kernel, and this kernel's
		t.Fatalf("kexec_load records in the second kernel: %q", loads)
	}
	loads = loads[1:]
	// Records added before the kexec_load record is measured: the restored ones, the
	// boot_aggregate and the three kexec_file_load measurements.
	want := "ima_runtime_measurements_count=" + strconv.Itoa(len(k.List())-1) + ";"
	if !strings.Contains(loads[0], want) || before < res.Restored {
		t.Errorf("kexec_load payload %q, want %s (restored %d)", loads[0], want, res.Restored)
	}
}

// TestKexecLoadTooLarge: ima_add_kexec_buffer refuses a segment above half of RAM before
// ima_alloc_kexec_file_buf, so no kexec_load record is measured and nothing is carried.
func TestKexecLoadTooLarge(t *testing.T) {
	k := newKernel(t, kmodel.Config{Profile: kmodel.Profile72, MemoryBytes: 8192})
	k.Synthetic(20)
	res, err := k.KexecLoadFiles(kmodel.File{Path: "/boot/k", Content: []byte("k")}, kmodel.File{Path: "/boot/i", Content: []byte("i")}, "c")
	if err != nil {
		t.Fatal(err)
	}
	if res.SegmentSize != 0 || res.Note == "" {
		t.Fatalf("load: %+v", res)
	}
	if got := criticalData(t, k.List(), "kexec_load"); len(got) != 0 {
		t.Errorf("kexec_load recorded for a refused segment: %q", got)
	}
}

// TestSegmentSizeTwoHeaders: 7.2 sizes the segment as BINARY + BINARY_STAGED, each with its
// own 24-byte header (ima_get_binary_runtime_size), so a list that needs exactly a page
// with one header gets two pages.
func TestSegmentSizeTwoHeaders(t *testing.T) {
	for _, tc := range []struct {
		p       kmodel.Profile
		headers int64
	}{{kmodel.Profile616, 1}, {kmodel.Profile72, 2}} {
		withKernel(t, kmodel.Config{Profile: tc.p, ExtraMemoryKB: 1}, func(k *kmodel.Kernel) {
			k.Synthetic(3)
			res, err := k.KexecLoadFiles(kmodel.File{Path: "/boot/k", Content: []byte("k")}, kmodel.File{Path: "/boot/i", Content: []byte("i")}, "c")
			if err != nil {
				t.Fatal(err)
			}
			var size int64
			for _, r := range k.List() {
				if serialize.EventName(&r, le) == "kexec_load" {
					continue // measured after the sizing
				}
				size += int64(4 + 20 + 4 + len(r.Template) + 4 + len(r.Data))
			}
			want := (size + tc.headers*serialize.KexecHeaderSize + 1024 + 4095) / 4096 * 4096
			if res.SegmentSize != want {
				t.Errorf("%s: segment %d, want %d", tc.p, res.SegmentSize, want)
			}
		})
	}
}

func mustFields(t *testing.T, r serialize.Record) []serialize.Field {
	t.Helper()
	f, err := serialize.ParseFields(&r, le)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRestoreCustomFormatAsBuiltin: ima_template_fmt=d-ng|n-ng lists records under the
// format (the descriptor's name is empty); the next kernel looks the template up by name or
// format (lookup_template_desc) and lists them as ima-ng.
func TestRestoreCustomFormatAsBuiltin(t *testing.T) {
	k := newKernel(t, kmodel.Config{Profile: kmodel.Profile72, Template: "d-ng|n-ng"})
	k.Synthetic(2)
	if got := k.List()[1].Template; got != "d-ng|n-ng" {
		t.Fatalf("template before kexec %q", got)
	}
	if err := k.KexecLoad([]byte("k"), []byte("i"), "c"); err != nil {
		t.Fatal(err)
	}
	res, err := k.KexecExecuteResult()
	if err != nil {
		t.Fatal(err)
	}
	if res.Restored < 3 {
		t.Fatalf("restored %d", res.Restored)
	}
	for i, r := range k.List()[:res.Restored] {
		if r.Template == "d-ng|n-ng" {
			t.Errorf("record %d restored as %q, want ima-ng", i, r.Template)
		}
	}
	if k.List()[1].Template != "ima-ng" {
		t.Errorf("restored record 1: %q", k.List()[1].Template)
	}
	// The next kernel's own records use its ima_template_fmt descriptor (empty name).
	if got := k.List()[res.Restored].Template; got != "d-ng|n-ng" {
		t.Errorf("new boot_aggregate: %q", got)
	}
}

// TestDebian72Profile: Debian's 7.2 (no CONFIG_IMA_STAGING, no CONFIG_IMA_KEXEC): list files
// 0660 without _staged files, N accepted, no kexec records, nothing carried.
func TestDebian72Profile(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.ProfileDebian72})
	orig := filepath.Join(env.IMADir, "binary_runtime_measurements_sha1")
	if fi, err := os.Stat(orig); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("stat %v %v", fi, err)
	}
	if _, err := os.Lstat(filepath.Join(env.IMADir, "binary_runtime_measurements_sha1_staged")); !os.IsNotExist(err) {
		t.Errorf("staged file on debian-7.2: %v", err)
	}
	env.Kernel.Synthetic(3)
	if err := writeFile(orig, os.O_WRONLY, "2\n"); err != nil {
		t.Errorf("N on debian-7.2: %v", err)
	}
	if err := writeFile(orig, os.O_WRONLY, "A\n"); errnoOf(err) != syscall.EINVAL {
		t.Errorf("A on the original file: %v, want EINVAL", err)
	}
	n := len(env.Kernel.List())
	if err := env.Kernel.KexecLoad([]byte("k"), []byte("i"), "c"); err != nil {
		t.Fatal(err)
	}
	if got := len(env.Kernel.List()) - n; got != 3 { // kernel, initrd, cmdline; no kexec_load
		t.Errorf("kexec_file_load added %d records, want 3", got)
	}
	res, err := env.Kernel.KexecExecuteResult()
	if err != nil {
		t.Fatal(err)
	}
	if res.Buffer != nil || res.Restored != 0 || res.Count != 1 {
		t.Errorf("after kexec: %+v", res)
	}
}

// TestFlushHTableIgnoredWithoutHTable: ima_flush_htable_setup ignores the parameter under
// CONFIG_IMA_DISABLE_HTABLE, so N stays accepted.
func TestFlushHTableIgnoredWithoutHTable(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72, FlushHTable: true, DisableHTable: true})
	env.Kernel.Synthetic(2)
	if err := writeFile(filepath.Join(env.IMADir, "binary_runtime_measurements_sha1"), os.O_WRONLY, "1\n"); err != nil {
		t.Errorf("N with ima_flush_htable under CONFIG_IMA_DISABLE_HTABLE: %v", err)
	}
}

// TestPolicyFSMagicAndCriticalData: fsmagic= restricts a rule (ima_match_rules), and a rule
// without func= never matches CRITICAL_DATA; a rule with func=CRITICAL_DATA and no label
// measures kernel_info/kernel_version at boot (ima_init).
func TestPolicyFSMagicAndCriticalData(t *testing.T) {
	withKernel(t, kmodel.Config{Profile: kmodel.Profile72, Policy: "dont_measure fsmagic=0x01021994\nmeasure\n"}, func(k *kmodel.Kernel) {
		for _, tc := range []struct {
			path string
			want kmodel.Outcome
		}{{"/tmp/x", kmodel.OutcomeNotMeasured}, {"/run/y", kmodel.OutcomeNotMeasured}, {"/etc/z", kmodel.OutcomeMeasured}} {
			if r, err := k.Read(tc.path, []byte(tc.path)); err != nil || r.Outcome != tc.want {
				t.Errorf("read %s: %v %v, want %v", tc.path, r.Outcome, err, tc.want)
			}
		}
		if err := k.KexecLoad([]byte("k"), []byte("i"), "c"); err != nil {
			t.Fatal(err)
		}
		if got := criticalData(t, k.List(), "kexec_load"); len(got) != 0 {
			t.Errorf("a rule without func= measured critical data: %q", got)
		}
		if got := criticalData(t, k.List(), "kernel_version"); len(got) != 0 {
			t.Errorf("kernel_version without a CRITICAL_DATA rule: %q", got)
		}
	})
	withKernel(t, kmodel.Config{Profile: kmodel.Profile72, Policy: "measure func=CRITICAL_DATA\n"}, func(k *kmodel.Kernel) {
		if got := criticalData(t, k.List(), "kernel_version"); len(got) != 1 || got[0] != k.Features().Release {
			t.Errorf("kernel_version at boot: %q", got)
		}
	})
	withKernel(t, kmodel.Config{Profile: kmodel.Profile72, Policy: "measure func=CRITICAL_DATA label=ima_kexec\n"}, func(k *kmodel.Kernel) {
		if got := criticalData(t, k.List(), "kernel_version"); len(got) != 0 {
			t.Errorf("kernel_version under label=ima_kexec: %q", got)
		}
	})
}

// TestIMATemplateNeedsSHA1: ima_template_setup ignores ima_template=ima with an ima_hash
// other than sha1 or md5; the default template stays.
func TestIMATemplateNeedsSHA1(t *testing.T) {
	withKernel(t, kmodel.Config{Template: "ima", Hash: "sha256"}, func(k *kmodel.Kernel) {
		if got := k.Config().Template; got != "ima-ng" {
			t.Errorf("ima with sha256: template %q, want the default ima-ng", got)
		}
	})
	withKernel(t, kmodel.Config{Template: "ima", Hash: "sha1"}, func(k *kmodel.Kernel) {
		if got := k.Config().Template; got != "ima" {
			t.Errorf("ima with sha1: template %q", got)
		}
	})
}
