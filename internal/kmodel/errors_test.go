package kmodel_test

import (
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// TestErrorRows checks every error of the 7.2 list files through the FUSE mount, with the
// exact errno of _ima_measurements_write, ima_queue_stage, ima_queue_staged_delete_all
// and ima_queue_delete_partial, including their order when two conditions hold.
func TestErrorRows(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72, MaxReaders: 2})
	k := env.Kernel
	orig := filepath.Join(env.IMADir, "binary_runtime_measurements_sha256")
	ascii := filepath.Join(env.IMADir, "ascii_runtime_measurements_sha1")
	staged := filepath.Join(env.IMADir, "binary_runtime_measurements_sha1_staged")
	for i := 0; i < 5; i++ {
		k.Synthetic(1)
	}
	check := func(what string, err error, want syscall.Errno) {
		t.Helper()
		if got := errnoOf(err); got != want {
			t.Errorf("%s: got %v (%v), want %v", what, err, got, want)
		}
	}
	// File modes.
	for name, mode := range map[string]os.FileMode{orig: 0o660, staged: 0o660, filepath.Join(env.IMADir, "runtime_measurements_count"): 0o440, filepath.Join(env.IMADir, "violations"): 0o440} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	// Open rules.
	check("write open without CAP_SYS_ADMIN (uid 65534, gid 0)", openAs(65534, 0, orig, os.O_WRONLY), syscall.EPERM)
	check("write open by other (DAC)", openAs(65534, 65534, orig, os.O_WRONLY), syscall.EACCES)
	check("read open by group 0", openAs(65534, 0, orig, os.O_RDONLY), 0)

	r1, err := os.Open(orig)
	if err != nil {
		t.Fatal(err)
	}
	check("writer while a reader is open", writeFile(staged, os.O_WRONLY, "A\n"), syscall.EBUSY)
	r2, err := os.Open(ascii)
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Open(staged)
	check("reader past the reader limit", err, syscall.ENFILE)
	r1.Close()
	r2.Close()

	runtime.LockOSThread()
	w, err := os.OpenFile(staged, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Open(orig)
	check("reader while a writer is open", err, syscall.EBUSY)
	w2, err := os.OpenFile(orig, os.O_WRONLY, 0)
	check("second write open by the writer's thread", err, 0)
	otherThread := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		f, err := os.OpenFile(orig, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		otherThread <- err
	}()
	check("write open from another thread", <-otherThread, syscall.EBUSY)
	if w2 != nil {
		w2.Close()
	}

	wr := func(s string) error { _, err := w.Write([]byte(s)); return err }
	check("A without newline", wr("A"), syscall.EINVAL)
	check("request of 22 bytes", wr("1234567890123456789012"), syscall.EINVAL)
	check("N on a staged file", wr("1\n"), syscall.EINVAL)
	check("D with nothing staged", wr("D\n"), syscall.ENOENT)
	check("A", wr("A\n"), 0)
	check("A again", wr("A\n"), syscall.EEXIST)
	check("D", wr("D\n"), 0)
	check("A with an empty current list", wr("A\n"), syscall.ENOENT)
	w.Close()
	runtime.UnlockOSThread()

	k.Synthetic(3)
	check("A on an original file", writeFile(orig, os.O_WRONLY, "A\n"), syscall.EINVAL)
	check("D on an original file", writeFile(orig, os.O_WRONLY, "D\n"), syscall.EINVAL)
	check("N = 0", writeFile(orig, os.O_WRONLY, "0\n"), syscall.EINVAL)
	check("N not a number", writeFile(orig, os.O_WRONLY, "2x\n"), syscall.EINVAL)
	check("N without newline", writeFile(orig, os.O_WRONLY, "2"), syscall.EINVAL)
	check("N beyond the list", writeFile(orig, os.O_WRONLY, "4\n"), syscall.ENOENT)
	check("N = 2", writeFile(ascii, os.O_WRONLY|os.O_TRUNC, "2\n"), 0)
	if c := k.Counters(); c.RuntimeMeasurementsCount != 1 || c.Current != 1 {
		t.Errorf("after N=2 of 3: counters %+v", c)
	}
	check("A for staging", writeFile(staged, os.O_WRONLY, "A\n"), 0)

	// Suspended (reboot notifier of a kexec under way).
	if err := k.KexecLoad([]byte("kernel"), []byte("initrd"), "console=ttyS0"); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Suspend(); err != nil {
		t.Fatal(err)
	}
	check("D once suspended", writeFile(staged, os.O_WRONLY, "D\n"), syscall.ESTALE)
	check("N once suspended", writeFile(orig, os.O_WRONLY, "1\n"), syscall.ESTALE)
	// ima_queue_stage checks "something staged" before "suspended".
	check("A once suspended, records staged", writeFile(filepath.Join(env.IMADir, "ascii_runtime_measurements_sha512_staged"), os.O_WRONLY, "A\n"), syscall.EEXIST)
	// ima_queue_delete_partial counts the records before it looks at "suspended".
	check("N beyond the list once suspended", writeFile(orig, os.O_WRONLY, "99\n"), syscall.ENOENT)
	if r, _ := k.Exec("/bin/late", []byte("late")); r.Outcome != kmodel.OutcomeSuspended {
		t.Errorf("exec after suspend: %v", r.Outcome)
	}
}

// TestErrnoPrecedenceSuspended covers the suspended rows the kernel orders after another
// check: A on an empty list is ENOENT and only a non-empty one EACCES (ima_queue_stage); D
// with nothing staged is ENOENT, not ESTALE (ima_queue_staged_delete_all).
func TestErrnoPrecedenceSuspended(t *testing.T) {
	for _, tc := range []struct {
		name    string
		records int // measured after A and D emptied both lists
		req     string
		want    syscall.Errno
	}{
		{"A, list empty", 0, "A\n", syscall.ENOENT},
		{"A, list not empty", 2, "A\n", syscall.EACCES},
		{"D, nothing staged", 2, "D\n", syscall.ENOENT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
			staged := filepath.Join(env.IMADir, "binary_runtime_measurements_sha1_staged")
			for _, r := range []string{"A\n", "D\n"} {
				if err := writeFile(staged, os.O_WRONLY, r); err != nil {
					t.Fatalf("%q: %v", r, err)
				}
			}
			env.Kernel.Synthetic(tc.records)
			if _, err := env.Kernel.Suspend(); err != nil {
				t.Fatal(err)
			}
			if got := errnoOf(writeFile(staged, os.O_WRONLY, tc.req)); got != tc.want {
				t.Errorf("%q: %v, want %v", tc.req, got, tc.want)
			}
		})
	}
}

// TestErrorRowsFlushAndOld covers N with ima_flush_htable and the read-only lists of
// kernels before 7.2.
func TestErrorRowsFlushAndOld(t *testing.T) {
	t.Run("flush", func(t *testing.T) {
		env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72, FlushHTable: true})
		err := writeFile(filepath.Join(env.IMADir, "binary_runtime_measurements_sha1"), os.O_WRONLY, "1\n")
		if errnoOf(err) != syscall.EINVAL {
			t.Errorf("N with ima_flush_htable: %v, want EINVAL", err)
		}
	})
	t.Run("6.16", func(t *testing.T) {
		env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile616})
		name := filepath.Join(env.IMADir, "binary_runtime_measurements_sha1")
		fi, err := os.Stat(name)
		if err != nil || fi.Mode().Perm() != 0o440 {
			t.Fatalf("stat: %v %v", fi, err)
		}
		if err := writeFile(name, os.O_WRONLY, "1\n"); errnoOf(err) != syscall.EINVAL {
			t.Errorf("write to a 6.16 list: %v, want EINVAL", err)
		}
		if _, err := os.Stat(filepath.Join(env.IMADir, "binary_runtime_measurements_sha1_staged")); !os.IsNotExist(err) {
			t.Errorf("6.16 has staged files: %v", err)
		}
		if err := openAs(65534, 0, name, os.O_WRONLY); errnoOf(err) != syscall.EACCES {
			t.Errorf("write open of 0440 by group: %v, want EACCES", err)
		}
	})
	t.Run("trim", func(t *testing.T) {
		env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72Trim})
		env.Kernel.Synthetic(4)
		trim := filepath.Join(env.IMADir, "ima_trim_log")
		if err := openAs(65534, 0, trim, os.O_RDONLY); errnoOf(err) != syscall.EPERM {
			t.Errorf("read of ima_trim_log without CAP_SYS_ADMIN: %v, want EPERM", err)
		}
		if err := writeFile(trim, os.O_WRONLY, "1:2\n"); errnoOf(err) != syscall.EINVAL {
			t.Errorf("T mismatch: %v, want EINVAL", err)
		}
		if err := writeFile(trim, os.O_WRONLY, "0:9\n"); errnoOf(err) != syscall.ENOENT {
			t.Errorf("N beyond the list: %v, want ENOENT", err)
		}
		if err := writeFile(trim, os.O_WRONLY, "0:2\n"); err != nil {
			t.Fatalf("0:2: %v", err)
		}
		b, err := os.ReadFile(trim)
		if err != nil || string(b) != "2\n" {
			t.Errorf("T after trimming 2: %q %v", b, err)
		}
	})
}

// TestStagingRFCv1Names: with StagingRFCv1 the staged files carry the RFC v1 names
// (`…_staged_<algo>`, the `_staged` symlinks pointing at them), A and D work on them, and
// reading an empty staged list fails with ENOENT.
func TestStagingRFCv1Names(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72, StagingRFCv1: true})
	env.Kernel.Synthetic(3)
	for _, b := range allBanks {
		if _, err := os.Stat(filepath.Join(env.IMADir, "binary_runtime_measurements_staged_"+b.Name)); err != nil {
			t.Errorf("RFC v1 staged file for %s: %v", b.Name, err)
		}
		if _, err := os.Lstat(filepath.Join(env.IMADir, "binary_runtime_measurements_"+b.Name+"_staged")); !os.IsNotExist(err) {
			t.Errorf("7.2 staged name for %s exists under RFC v1: %v", b.Name, err)
		}
	}
	if target, err := os.Readlink(filepath.Join(env.IMADir, "binary_runtime_measurements_staged")); err != nil || target != "binary_runtime_measurements_staged_sha1" {
		t.Errorf("staged symlink: %q %v", target, err)
	}
	staged := filepath.Join(env.IMADir, "binary_runtime_measurements_staged_sha1")
	if _, err := os.ReadFile(staged); errnoOf(err) != syscall.ENOENT {
		t.Errorf("read of an empty RFC v1 staged list: %v, want ENOENT", err)
	}
	if err := writeFile(staged, os.O_WRONLY, "A\n"); err != nil {
		t.Fatalf("A: %v", err)
	}
	if recs := readRecords(t, staged, 20); len(recs) != 4 { // boot_aggregate + 3
		t.Errorf("staged %d records, want 4", len(recs))
	}
	if err := writeFile(staged, os.O_WRONLY, "D\n"); err != nil {
		t.Fatalf("D: %v", err)
	}
	if c := env.Kernel.Counters(); c.Staged != 0 || c.Current != 0 {
		t.Errorf("after A and D: %+v", c)
	}
}
