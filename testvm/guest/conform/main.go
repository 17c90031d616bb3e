//go:build linux

// Command conform is a test VM's /init that runs the conformance table (package
// testvm/conformance) against the running kernel and sends what it saw back through the
// data port, then powers off.
//
// First the chain of kexecs: generation N (conform.gen=N, 0 at the first boot) reads its
// list before anything else is measured and sends it as "kexec/<N-1>/after", brings the
// lists into state N of conformance.StatesFor(kind), loads the same kernel
// (/boot/vmlinuz) with an initramfs of this program, does what the state does after the
// load, sends what it holds as
// "kexec/<N>/before" and jumps. The last generation runs the file rows and sends them as
// "conformance". The rows are compared on the host, not here.
//
// Kernel command line: conform.kind=staging|debian (the configuration the host expects).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/u-root/u-root/pkg/cpio"
	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kcmdline"
	"github.com/imakexec/imakexec/testvm/conformance"
	"github.com/imakexec/imakexec/testvm/guestlib"
)

// env is the running kernel. Measure reads fresh files on /tmp as root, which the test
// policy measures with FILE_CHECK; nothing else the program does is measured (securityfs,
// proc and sysfs are excluded by the policy).
type env struct{ n int }

func (e *env) IMADir() string { return guestlib.IMADir }

func (e *env) Measure(n int) error {
	for i := 0; i < n; i++ {
		e.n++
		p := filepath.Join("/tmp", fmt.Sprintf("conform-%d", e.n))
		if err := os.WriteFile(p, []byte(fmt.Sprintf("conformance record %d\n", e.n)), 0o644); err != nil {
			return err
		}
		if _, err := os.ReadFile(p); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) Suspend() error { return conformance.ErrCannotSuspend }

const (
	kernelPath = "/boot/vmlinuz"
	nextInitrd = "/tmp/next.cpio"
	// policy is the test policy with the kexec command line and the ima_kexec critical
	// data (kexec_load, kexec_execute), as the kernel model's default policy has them.
	policy = guestlib.TestPolicy + guestlib.PolicyKexecCmdline + guestlib.PolicyKexecRecords
)

func main() {
	g := guestlib.Start()
	kind := conformance.Kind(g.Arg("conform.kind", string(conformance.Staging)))
	gen := g.IntArg("conform.gen", 0)
	e := &env{}
	if gen > 0 {
		a, err := conformance.ReadAfter(e)
		if err != nil {
			g.Fatalf("generation %d: read the list: %v", gen, err)
		}
		blob(g, fmt.Sprintf("kexec/%d/after", gen-1), a)
	}
	if err := guestlib.WritePolicy(guestlib.IMADir, policy); err != nil {
		g.Fatalf("%v", err)
	}
	if states := conformance.StatesFor(kind); gen < len(states) {
		kexec(g, e, states[gen], gen)
		return // not reached
	}
	rows := conformance.Run(e, kind)
	blob(g, "conformance", rows)
	g.Mark("done %d rows after %d kexecs", len(rows), gen)
	g.Poweroff()
}

func blob(g *guestlib.Guest, name string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		g.Fatalf("%v", err)
	}
	if err := g.Blob(name, b); err != nil {
		g.Fatalf("%v", err)
	}
}

// kexec brings the lists into st, loads the next generation and jumps.
func kexec(g *guestlib.Guest, e *env, st conformance.KexecState, gen int) {
	if err := writeInitrd(nextInitrd); err != nil {
		g.Fatalf("next initramfs: %v", err)
	}
	deleted, err := conformance.Prepare(e, st)
	if err != nil {
		g.Fatalf("generation %d: %v", gen, err)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		g.Fatalf("%v", err)
	}
	next := kcmdline.Without(string(cmdline), "conform.gen") + " conform.gen=" + strconv.Itoa(gen+1)
	k, err := os.Open(kernelPath)
	if err != nil {
		g.Fatalf("%v", err)
	}
	i, err := os.Open(nextInitrd)
	if err != nil {
		g.Fatalf("%v", err)
	}
	var kx initramfs.SysKexec
	if err := kx.FileLoad(int(k.Fd()), int(i.Fd()), next); err != nil {
		g.Fatalf("generation %d: %v", gen, err)
	}
	if err := st.AfterLoad(e); err != nil {
		g.Fatalf("generation %d: %v", gen, err)
	}
	b, err := conformance.Snapshot(e, st.Name, deleted)
	if err != nil {
		g.Fatalf("generation %d: %v", gen, err)
	}
	blob(g, fmt.Sprintf("kexec/%d/before", gen), b)
	g.Mark("kexec gen=%d state=%q", gen, st.Name)
	g.Drain()
	unix.Sync()
	if err := kx.Reboot(); err != nil {
		g.Fatalf("%v", err)
	}
}

// writeInitrd writes an initramfs of this program as /init and the kernel as
// /boot/vmlinuz (for the generations after the next), uncompressed as testvm builds them.
func writeInitrd(out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := cpio.Newc.Writer(f)
	for _, d := range []string{"boot", "dev", "proc", "sys", "tmp"} {
		if err := w.WriteRecord(cpio.Directory(d, 0o755)); err != nil {
			return err
		}
	}
	if err := w.WriteRecord(cpio.CharDev("dev/console", 0o600, 5, 1)); err != nil {
		return err
	}
	for _, p := range []struct {
		name, host string
		mode       uint64
	}{{"init", "/init", 0o755}, {"boot/vmlinuz", kernelPath, 0o644}} {
		hf, err := os.Open(p.host)
		if err != nil {
			return err
		}
		defer hf.Close()
		st, err := hf.Stat()
		if err != nil {
			return err
		}
		rec := cpio.Record{ReaderAt: hf, Info: cpio.Info{Name: p.name, Mode: cpio.S_IFREG | p.mode, FileSize: uint64(st.Size())}}
		if err := w.WriteRecord(rec); err != nil {
			return err
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return err
	}
	return f.Close()
}
