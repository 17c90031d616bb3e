//go:build linux

// Command imacapture is a test VM's /init that produces a small, varied IMA
// measurement list and sends it to the host together with the PCRs.
//
// It loads a test IMA policy (the built-in tcb policy measures nothing in an
// initramfs: the rootfs is tmpfs, which tcb does not measure), executes
// /bin/hello, reads every file under /etc/imacapture (the capture tool puts
// one with a space in its name, one with a path longer than 255 bytes and one
// carrying a security.ima signature there), provokes an
// open_writers and a ToMToU violation, and calls kexec_file_load so that the
// KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK and kexec-cmdline (ima-buf)
// records appear. Then it sends the IMA files and both PCR banks (see
// guestlib.SendSnapshot) and powers off, or kexecs into the loaded kernel.
//
// Kernel command line knobs:
//
//	imacapture.kexec=load|jump|none  kexec_file_load only (default), load and
//	                                 jump, or skip kexec entirely
//	imacapture.kexeccmdline=0        leave out the KEXEC_CMDLINE policy rule
//	                                 (an ima-buf record cannot share a list
//	                                 with the "ima" template in evmctl)
//	imacapture.stage=N               set on the kexec'd kernel's command line
//
// Blob names: without a jump, the snapshot files under their own names; with
// a jump, under "before/" (taken right before reboot(KEXEC)) and "after/"
// (taken in the kexec'd kernel).
package main

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/boot/kexec"
	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/testvm/guestlib"
)

// Paths inside the initramfs, written by the host (testvm/cmd/capture).
const (
	kernelPath = "/boot/vmlinuz"
	initrdPath = "/boot/initrd.cpio"
	helloPath  = "/bin/hello"
	dataDir    = "/etc/imacapture"
	// signedFile has a v2 IMA signature in signedFile+".sig", made by the
	// host; the guest puts it into security.ima before measuring the file.
	signedFile = dataDir + "/signed.txt"
)

// policyBase is the test guests' policy (guestlib.TestPolicy).
const policyBase = guestlib.TestPolicy

const policyKexecCmdline = "measure func=KEXEC_CMDLINE\n"

var banks = []string{"sha1", "sha256"}

func main() {
	g := guestlib.Start()
	stage := g.IntArg("imacapture.stage", 1)
	mode := g.Arg("imacapture.kexec", "load")
	switch mode {
	case "none", "load", "jump":
	default:
		g.Fatalf("imacapture.kexec=%q: want none, load or jump", mode)
	}
	g.Mark("stage %d kexec=%s", stage, mode)

	policy := policyBase
	if g.Arg("imacapture.kexeccmdline", "1") != "0" {
		policy += policyKexecCmdline
	}
	if err := guestlib.WritePolicy(guestlib.IMADir, policy); err != nil {
		g.Fatalf("%v", err)
	}

	measure(g)
	if stage == 1 {
		signed(g)
		violations(g)
		if mode != "none" {
			cl := g.Cmdline
			if mode == "jump" {
				cl += fmt.Sprintf(" imacapture.stage=%d", stage+1)
			}
			if err := load(cl); err != nil {
				g.Fatalf("%v", err)
			}
			g.Mark("kexec-load ok")
		}
	}

	prefix := ""
	if mode == "jump" {
		prefix = "before/"
		if stage > 1 {
			prefix = "after/"
		}
	}
	if err := sendInfo(g, prefix, policy); err != nil {
		g.Fatalf("%v", err)
	}
	snap, err := guestlib.SnapshotIMA(guestlib.IMADir, guestlib.TPMDir, banks...)
	if err != nil {
		g.Fatalf("%v", err)
	}
	if err := g.SendSnapshot(prefix, snap); err != nil {
		g.Fatalf("%v", err)
	}
	g.Mark("snapshot stage=%d count=%s", stage, strings.TrimSpace(string(snap.Count)))

	if mode == "jump" && stage == 1 {
		g.Mark("kexec-jump")
		g.Drain()
		unix.Sync()
		if err := kexec.Reboot(); err != nil {
			g.Fatalf("kexec reboot: %v", err)
		}
	}
	g.Mark("done")
	g.Poweroff()
}

// measure creates measurements that every stage has: an exec and file reads.
func measure(g *guestlib.Guest) {
	out, err := exec.Command(helloPath).CombinedOutput()
	if err != nil {
		g.Fatalf("exec %s: %v: %s", helloPath, err, out)
	}
	g.Logf("%s", strings.TrimSpace(string(out)))
	// Every file the host put under dataDir, in lexical order. The capture
	// tool adds one with a path longer than 255 bytes: the "ima" template's
	// n field cannot hold it, n-ng can.
	n := 0
	err = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || p == signedFile {
			return err
		}
		n++
		readFile(g, p)
		return nil
	})
	if err != nil || n == 0 {
		g.Fatalf("no files read in %s (%v)", dataDir, err)
	}
}

func readFile(g *guestlib.Guest, name string) {
	if _, err := os.ReadFile(name); err != nil {
		g.Fatalf("read %s: %v", name, err)
	}
}

// signed sets the security.ima xattr of signedFile to the host-made
// signature, so that templates with a "sig" field record it.
func signed(g *guestlib.Guest) {
	sig, err := os.ReadFile(signedFile + ".sig")
	if err != nil {
		g.Mark("signed skipped: %v", err)
		return
	}
	if err := unix.Setxattr(signedFile, "security.ima", sig, 0); err != nil {
		// tinyconfig kernels have no TMPFS_XATTR; the file is still measured.
		g.Mark("signed setxattr failed: %v", err)
	} else {
		g.Mark("signed setxattr ok")
	}
	readFile(g, signedFile)
}

// violations provokes the two IMA violation kinds. Each logs a record with
// an all-zero digest (PCR 10 is extended with all-ones instead).
func violations(g *guestlib.Guest) {
	// open_writers: a measured open for read while a writer is open.
	ow := "/tmp/open-writers.txt"
	w, err := os.OpenFile(ow, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		g.Fatalf("violation: %v", err)
	}
	if _, err := w.WriteString("written while read\n"); err != nil {
		g.Fatalf("violation: %v", err)
	}
	readFile(g, ow)
	w.Close()

	// ToMToU: an open for write while a measured reader is open.
	tm := "/tmp/tomtou.txt"
	if err := os.WriteFile(tm, []byte("time of measure\n"), 0o644); err != nil {
		g.Fatalf("violation: %v", err)
	}
	r, err := os.Open(tm)
	if err != nil {
		g.Fatalf("violation: %v", err)
	}
	w, err = os.OpenFile(tm, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		g.Fatalf("violation: %v", err)
	}
	w.WriteString("time of use\n")
	w.Close()
	r.Close()
	g.Mark("violations done")
}

// load calls kexec_file_load with the initramfs's kernel and second initrd.
func load(cmdline string) error {
	k, err := os.Open(kernelPath)
	if err != nil {
		return fmt.Errorf("kexec load: %w", err)
	}
	defer k.Close()
	i, err := os.Open(initrdPath)
	if err != nil {
		return fmt.Errorf("kexec load: %w", err)
	}
	defer i.Close()
	t := time.Now()
	if err := kexec.FileLoad(k, i, cmdline); err != nil {
		return fmt.Errorf("kexec load: %w", err)
	}
	fmt.Printf("kexec_file_load took %v\n", time.Since(t).Round(time.Millisecond))
	return nil
}

// sendInfo sends what describes the capture: kernel release, command line and
// the policy that was loaded.
func sendInfo(g *guestlib.Guest, prefix, policy string) error {
	rel, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return err
	}
	for _, b := range []struct {
		name string
		data []byte
	}{
		{"kernel-release.txt", rel},
		{"cmdline.txt", []byte(g.Cmdline + "\n")},
		{"ima-policy.txt", []byte(policy)},
	} {
		if err := g.Blob(prefix+b.name, b.data); err != nil {
			return err
		}
	}
	return nil
}
