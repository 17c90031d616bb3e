package view

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

// env is the kernel model over FUSE (securityfs, TPM simulator, procfs), a store, and the
// view of both mounted in a temporary directory.
type env struct {
	t     testing.TB
	k     *kmodel.Kernel
	paths handover.Paths
	store string
	v     *View
	mnt   string
	files int
	kexec int
}

func newEnv(t testing.TB, cfg kmodel.Config) *env {
	t.Helper()
	ke := kmodeltest.Mount(t, cfg)
	return &env{t: t, k: ke.Kernel, paths: handover.Paths{Securityfs: ke.Securityfs, Proc: ke.Proc}, store: filepath.Join(t.TempDir(), "store")}
}

// serve opens the view and mounts it.
func (e *env) serve() {
	e.t.Helper()
	v, err := New(context.Background(), Options{Paths: e.paths, StoreDir: e.store, IndexEvery: 16, Logf: e.t.Logf})
	if err != nil {
		e.t.Fatalf("open view: %v", err)
	}
	e.v = v
	e.mnt = e.t.TempDir()
	srv, err := Mount(e.mnt, v, &MountOptions{AllowOther: true})
	if err != nil {
		e.t.Fatalf("mount view: %v", err)
	}
	e.t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			e.t.Errorf("unmount view: %v", err)
		}
	})
}

// work measures n new files, with now and then a violation.
func (e *env) work(n int) {
	e.t.Helper()
	kmodeltest.Work(e.t, e.k, &e.files, n, 41)
}

func (e *env) drain(backend handover.Backend) *handover.DrainResult {
	e.t.Helper()
	r, err := handover.Drain(context.Background(), handover.DrainOptions{Paths: e.paths, StoreDir: e.store, Backend: backend, TPM: e.k.TPM(), BusyTimeout: 5 * time.Second})
	if err != nil {
		e.t.Fatalf("drain %s: %v", backend, err)
	}
	return r
}

func (e *env) rejoin(w *handover.WindowInputs) *handover.RejoinResult {
	e.t.Helper()
	r, err := handover.Rejoin(context.Background(), handover.RejoinOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), Window: w})
	if err != nil {
		e.t.Fatalf("rejoin: %v", err)
	}
	return r
}

// kexecJump loads the next kernel as `imakexec kexec` does (the last drain right before
// the load, the initrd in a memfd, its digest on the command line), jumps, and measures a
// little in the new kernel; it returns the window inputs for rejoin.
func (e *env) kexecJump(between func()) *handover.WindowInputs {
	e.t.Helper()
	e.kexec++
	e.drain("auto")
	kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte(fmt.Sprintf("kernel image %d", e.kexec))}
	initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte(fmt.Sprintf("initrd with handoff %d", e.kexec))}
	cmdline := fmt.Sprintf("console=ttyS0 imakexec.initrd=sha256:%x", sha256.Sum256(initrd.Content))
	if _, err := e.k.KexecLoadFiles(kernel, initrd, cmdline); err != nil {
		e.t.Fatal(err)
	}
	if between != nil {
		between()
	}
	if err := e.k.KexecExecute(); err != nil {
		e.t.Fatal(err)
	}
	e.work(2)
	file := func(what string, f kmodel.File) handover.WindowFile {
		s1, s256 := sha1.Sum(f.Content), sha256.Sum256(f.Content)
		return handover.WindowFile{What: what, Names: []string{f.Path}, Digests: map[string][]byte{"sha1": s1[:], "sha256": s256[:]}, Mode: 0o100644}
	}
	return &handover.WindowInputs{IMAHash: "sha256", Templates: []string{"ima-ng"}, PCR: 10,
		Files: []handover.WindowFile{file("kernel", kernel), file("initrd", initrd)}, Cmdline: &cmdline}
}

// export is the joined log in format f as handover.Export writes it (the store's chain
// reader, the live records, serialize's writers): the reference the view must equal.
func (e *env) export(f Format) []byte {
	e.t.Helper()
	var b bytes.Buffer
	o := handover.ExportOptions{ChainOptions: handover.ChainOptions{Paths: e.paths, StoreDir: e.store}}
	var err error
	if f.Kind == ASCII {
		w := serialize.NewASCIIWriter(&b, handover.StoreOrder, f.Bank, nil)
		if _, err = handover.Export(context.Background(), o, w.Write); err == nil {
			err = w.Flush()
		}
	} else {
		w := serialize.NewBinaryWriter(&b, handover.StoreOrder, f.Bank, nil)
		if _, err = handover.Export(context.Background(), o, w.Write); err == nil {
			err = w.Flush()
		}
	}
	if err != nil {
		e.t.Fatalf("export %s: %v", f.Name(), err)
	}
	return b.Bytes()
}

func (e *env) readView(name string) []byte {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.mnt, name))
	if err != nil {
		e.t.Fatalf("read view %s: %v", name, err)
	}
	return b
}

// tpmPCR10 reads PCR 10 from the simulator in the given banks.
func (e *env) tpmPCR10(banks []serialize.Bank) serialize.PCRValues {
	e.t.Helper()
	v, err := kmodel.ReadPCRs(e.k.TPM(), banks, []uint32{10})
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}
