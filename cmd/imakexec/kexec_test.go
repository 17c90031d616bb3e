package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/internal/storefs"
)

// modelKexec loads into the kernel model what kexec_file_load would get (the bytes behind
// the descriptors), and jumps.
type modelKexec struct {
	k       *kmodel.Kernel
	tr      *[]string
	initrd  []byte
	cmdline string
}

func readFd(fd int) []byte {
	var out []byte
	buf := make([]byte, 1<<16)
	for off := int64(0); ; {
		n, err := unix.Pread(fd, buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if n <= 0 || err != nil {
			return out
		}
	}
}

func (m *modelKexec) FileLoad(kfd, ifd int, cmdline string) error {
	*m.tr = append(*m.tr, "kexec.load")
	m.initrd, m.cmdline = readFd(ifd), cmdline
	kpath, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", kfd))
	_, err := m.k.KexecLoadFiles(kmodel.File{Path: kpath, Content: readFd(kfd)}, kmodel.File{Path: "memfd:" + initramfs.MemfdName, Content: m.initrd}, cmdline)
	return err
}
func (m *modelKexec) Sync()         {}
func (m *modelKexec) Reboot() error { *m.tr = append(*m.tr, "kexec.reboot"); return m.k.KexecExecute() }

// TestKexecCarriesStoreUnread runs the kexec flow with the real handover steps on the
// kernel model: the store the handoff carries is the store on disk after the last drain,
// byte for byte (manifest appended to, a new segment), yet no file is opened after the
// drain (each open could be a FILE_CHECK record in the kexec window) and the handoff
// records no post-drain read. After the jump the next kernel's /proc/cmdline names the
// initrd's digest.
func TestKexecCarriesStoreUnread(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
	store := filepath.Join(t.TempDir(), "store")
	paths := handover.Paths{Securityfs: env.Securityfs, Proc: env.Proc}
	for i := 0; i < 20; i++ {
		env.Kernel.Exec(fmt.Sprintf("/usr/bin/t%d", i), []byte{byte(i)})
	}
	if _, err := handover.Drain(context.Background(), handover.DrainOptions{Paths: paths, StoreDir: store, TPM: env.TPM}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		env.Kernel.Read(fmt.Sprintf("/etc/c%d", i), []byte{byte(i)})
	}
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte("K"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	var tr []string
	steps := handover.NewKexecSteps(paths, store, "unix:"+env.TPMSocket)
	defer steps.Close()
	o := initramfs.KexecOptions{
		Kernel: kernel, Cmdline: "console=ttyS0 ima_template=ima-ng ima_hash=sha256", Store: store, Proc: env.Proc,
		Trace: func(ev string) { tr = append(tr, "flow."+ev) },
		Open: func(name string) (initramfs.InputFile, error) {
			tr = append(tr, "open:"+filepath.Base(name))
			return os.Open(name)
		},
		// Store files are opened the flow's real way (storefs), traced like the rest.
		OpenStore: func(dir, rel string) (initramfs.InputFile, error) {
			tr = append(tr, "open:"+path.Base(rel))
			return storefs.OpenFile(dir, rel)
		},
	}
	kx := &modelKexec{k: env.Kernel, tr: &tr}
	oldBoot := env.Kernel.BootID()
	rep, err := initramfs.RunKexec(context.Background(), o, steps, kx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Drained == nil || rep.Drained.Records != 5 {
		t.Fatalf("drained %+v", rep.Drained)
	}
	drain := -1
	for i, ev := range tr {
		if ev == "flow.drain" {
			drain = i
		}
	}
	if drain < 0 || !strings.Contains(strings.Join(tr[:drain], " "), "open:manifest.jsonl") {
		t.Fatalf("trace %v", tr)
	}
	for _, ev := range tr[drain:] {
		if strings.HasPrefix(ev, "open:") {
			t.Errorf("%s after the last drain (trace %v)", ev, tr[drain:])
		}
	}
	ih, err := initramfs.ReadImageHandoff(bytes.NewReader(kx.initrd), int64(len(kx.initrd)), initramfs.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r := ih.Handoff.PostDrainReads; len(r) != 0 {
		t.Errorf("post-drain reads %+v", r)
	}
	names, err := initramfs.ListStore(store)
	if err != nil {
		t.Fatal(err)
	}
	carried := map[string][]byte{}
	for _, f := range ih.Handoff.Store.Files {
		carried[f.Name] = f.Data
	}
	if len(carried) != len(names) || len(names) < 3 {
		t.Fatalf("carried %d files, the store has %v", len(carried), names)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(store, filepath.FromSlash(n)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(carried[n], b) {
			t.Errorf("carried %s differs from the store", n)
		}
	}
	// The jump happened in the model: a new boot whose command line is the one loaded.
	sum := sha256.Sum256(kx.initrd)
	if env.Kernel.BootID() == oldBoot || env.Kernel.Cmdline() != kx.cmdline || !strings.Contains(kx.cmdline, initramfs.CmdlineParam+"=sha256:"+hex.EncodeToString(sum[:])) {
		t.Fatalf("after the jump: boot %s (was %s), cmdline %q", env.Kernel.BootID(), oldBoot, env.Kernel.Cmdline())
	}
	if b, _ := os.ReadFile(filepath.Join(env.Proc, "cmdline")); strings.TrimSpace(string(b)) != kx.cmdline {
		t.Fatalf("/proc/cmdline after the jump: %q", b)
	}
}
