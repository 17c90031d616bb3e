// Package kmodeltest mounts a kmodel kernel for tests: the FUSE securityfs tree in a
// temporary directory and the kernel's TPM on a unix socket, cleaned up with the test.
package kmodeltest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/simfs"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/internal/tpmserve"
)

// Env is a mounted model kernel.
type Env struct {
	Kernel *kmodel.Kernel
	// Securityfs is the mount point playing /sys/kernel/security.
	Securityfs string
	// IMADir is Securityfs/integrity/ima.
	IMADir string
	// TPMSocket serves the kernel's TPM with raw TPM 2.0 commands (for subprocesses run
	// with --tpm unix:SOCK).
	TPMSocket string
	// TPM is the same TPM in-process, safe for concurrent use.
	TPM transport.TPM
	// Proc plays /proc: the kernel rewrites sys/kernel/random/boot_id (new at every boot,
	// kexec included), sys/kernel/osrelease, cmdline and sys/kernel/kexec_load_disabled
	// at every boot (kmodel.Config.Proc).
	Proc string
}

// RequireFUSE skips the test when /dev/fuse is missing, or fails it when the environment
// variable CI is set (CI must run these tests).
func RequireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing(t, "FUSE is not available (/dev/fuse: "+err.Error()+")")
	}
	if os.Geteuid() != 0 {
		if _, err := os.Stat("/usr/bin/fusermount3"); err != nil {
			if _, err := os.Stat("/bin/fusermount"); err != nil {
				missing(t, "not root and no fusermount3/fusermount to mount FUSE")
			}
		}
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if testenv.InCI() {
		t.Fatalf("%s (CI is set: this must not be skipped)", why)
	}
	t.Skip(why)
}

// NewKernel boots a model kernel (on the in-process TPM simulator unless cfg.TPM is set)
// and closes it when the test ends. Tests using the simulator must not run in parallel.
func NewKernel(t testing.TB, cfg kmodel.Config) *kmodel.Kernel {
	t.Helper()
	k, err := kmodel.New(cfg)
	if err != nil {
		if strings.Contains(strings.ToLower(err.Error()), "cgo") {
			missing(t, "TPM simulator: "+err.Error())
		}
		t.Fatalf("boot kernel model: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// Mount boots a model kernel, mounts its securityfs tree in a temporary directory, keeps
// its procfs files in another (unless cfg.Proc names one) and serves its TPM on a unix
// socket; all of it is torn down when the test ends.
func Mount(t testing.TB, cfg kmodel.Config) *Env {
	t.Helper()
	RequireFUSE(t)
	if cfg.Proc == "" {
		cfg.Proc = t.TempDir()
	}
	k := NewKernel(t, cfg)
	// Unix socket paths are limited to 108 bytes; t.TempDir() can be longer.
	sockDir, err := os.MkdirTemp("", "kmt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	mnt := t.TempDir()
	// Let callers without root (tests of EPERM/EACCES) reach the mount.
	os.Chmod(filepath.Dir(mnt), 0o755)
	os.Chmod(mnt, 0o755)
	srv, err := simfs.Mount(mnt, k, nil)
	if err != nil {
		t.Fatalf("mount kernel model: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	sock := filepath.Join(sockDir, "tpm.sock")
	ts, err := tpmserve.Listen(sock, k.TPM())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.Close() })
	return &Env{Kernel: k, Securityfs: mnt, IMADir: filepath.Join(mnt, "integrity", "ima"), TPMSocket: sock, TPM: k.TPM(), Proc: cfg.Proc}
}

// Work measures n new files in k, numbered after *files (which it advances): executed and
// read files in turn, and a violation every violationEvery-th file (0: none).
func Work(t testing.TB, k *kmodel.Kernel, files *int, n, violationEvery int) {
	t.Helper()
	for i := 0; i < n; i++ {
		*files++
		p := fmt.Sprintf("/usr/bin/tool-%d", *files)
		var err error
		switch {
		case violationEvery > 0 && *files%violationEvery == 0:
			_, err = k.Violation(p)
		case *files%2 == 0:
			_, err = k.Exec(p, []byte(p))
		default:
			_, err = k.Read(p, []byte(p+"x"))
		}
		if err != nil {
			t.Fatalf("measure %s: %v", p, err)
		}
	}
}
