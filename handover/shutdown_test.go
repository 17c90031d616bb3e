package handover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

func fakeSysfs(t *testing.T, loaded string) string {
	t.Helper()
	d := t.TempDir()
	if err := os.MkdirAll(filepath.Join(d, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "kernel", "kexec_loaded"), []byte(loaded+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// The last drain leaves a mark that the check at the jump accepts only while no record was
// measured after it, on a kernel that keeps its list (6.1) and one that deletes it (7.2).
func TestShutdownDrainAndCheck(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: p})
			e.work(30)
			pre := filepath.Join(t.TempDir(), "prog")
			if err := os.WriteFile(pre, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			var opened []string
			o := ShutdownOptions{Paths: e.paths, Sysfs: fakeSysfs(t, "1"), StoreDir: e.store, TPM: e.k.TPM(),
				Mark: filepath.Join(t.TempDir(), "run", "shutdown.json"), PreRead: []string{pre, "/nonexistent/x"},
				Open: func(n string) (*os.File, error) { opened = append(opened, n); return os.Open(n) }}
			res, err := ShutdownDrain(context.Background(), o)
			if err != nil {
				t.Fatalf("ShutdownDrain: %v", err)
			}
			if res.Mark == nil || res.Mark.Stored < 30 || res.Mark.BootID == "" {
				t.Fatalf("mark %+v: want >= 30 records stored and a boot id", res.Mark)
			}
			if !slices.Contains(res.PreRead, pre) || !slices.Contains(opened, pre) {
				t.Fatalf("pre-read %q (opened %q): want %s", res.PreRead, opened, pre)
			}
			if _, err := ShutdownCheck(o); err != nil {
				t.Fatalf("check right after the last drain: %v", err)
			}
			e.verify()
			// One record after the drain: the check names it.
			e.work(1)
			_, err = ShutdownCheck(o)
			if !errors.Is(err, ErrShutdownUnproven) || !strings.Contains(err.Error(), "/usr/bin/tool-31") {
				t.Fatalf("check after a later record: %v, want ErrShutdownUnproven naming /usr/bin/tool-31", err)
			}
			// A shutdown that is not a kexec removes the mark: a later jump is refused.
			o.Sysfs = fakeSysfs(t, "0")
			if res, err := ShutdownDrain(context.Background(), o); err != nil || res.Skipped == "" {
				t.Fatalf("ShutdownDrain without a kexec image: %+v, %v; want skipped", res, err)
			}
			if _, err := ShutdownCheck(o); !errors.Is(err, ErrShutdownUnproven) || !strings.Contains(err.Error(), "did not run") {
				t.Fatalf("check without a mark: %v, want ErrShutdownUnproven (did not run)", err)
			}
		})
	}
}

// A mark of another boot is refused.
func TestShutdownCheckOtherBoot(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian61})
	mark := filepath.Join(t.TempDir(), "shutdown.json")
	if err := os.WriteFile(mark, []byte(`{"boot_id":"other","runtime_measurements_count":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ShutdownCheck(ShutdownOptions{Paths: e.paths, Mark: mark})
	if !errors.Is(err, ErrShutdownUnproven) || !strings.Contains(err.Error(), "boot other") {
		t.Fatalf("check with another boot's mark: %v", err)
	}
}

// PreRead follows a real program to its ELF interpreter and libraries.
func TestPreReadELF(t *testing.T) {
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Skipf("no /bin/sh: %v", err)
	}
	got := PreRead([]string{"/bin/sh"}, os.Open)
	if len(got) < 3 || got[0] != sh {
		t.Fatalf("PreRead(/bin/sh) = %q: want %s, its interpreter and libc", got, sh)
	}
	var libc, interp bool
	for _, p := range got {
		libc = libc || strings.HasPrefix(filepath.Base(p), "libc.so")
		interp = interp || strings.HasPrefix(filepath.Base(p), "ld-linux")
	}
	if !libc || !interp {
		t.Fatalf("PreRead(/bin/sh) = %q: no libc or no ELF interpreter", got)
	}
}
