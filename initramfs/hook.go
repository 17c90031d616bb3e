package initramfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The boot hook runs in the next kernel's initramfs, before anything else: as u-root's
// uinit (u-root's init runs /bin/uinit, then its shell) or as /init itself. The kernel has
// unpacked the appended handoff archive into the rootfs, so the handoff is at /imakexec.

// Rejoiner joins the carried log with the running kernel's and proves it against the TPM.
// The command adapts package handover's rejoin to it.
type Rejoiner interface {
	// Rejoin is given the handoff read from the rootfs (nil when there is none: a cold boot
	// or a kexec by another tool) and the persistent store directory the carried files were
	// copied to.
	Rejoin(ctx context.Context, h *Handoff, storeDir string) (*Verdict, error)
}

// Verdict is rejoin's answer.
type Verdict struct {
	Verified bool
	Summary  string // one line, e.g. "12034 records, 2 kexecs, sha1+sha256 PCR 10 match"
}

// Mounter mounts a file system; the real one is SysMount.
type Mounter func(source, target, fstype string, flags uintptr, data string) error

// SysMount mounts with mount(2), creating the target directory.
func SysMount(source, target, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	return unix.Mount(source, target, fstype, flags, data)
}

// HookOptions configure RunHook.
type HookOptions struct {
	Root     string    // rootfs root, "/" (tests use a temporary directory)
	Handoff  string    // handoff directory below Root, default HandoffDir ("imakexec")
	Store    string    // persistent store directory below Root, default "run/imakexec"
	Mount    bool      // mount proc, sys, dev, securityfs, run (tmpfs) when missing
	Mounter  Mounter   // default SysMount
	Console  io.Writer // where the verdict goes
	KeepCopy bool      // leave /imakexec in place after copying (default: remove it)
}

// HookResult is what the hook found and did.
type HookResult struct {
	Handoff *Handoff
	Verdict *Verdict
	Err     error // rejoin's error, or the handoff's; the boot goes on regardless
	Line    string
}

// pseudo file systems the hook needs, relative to Root.
var hookMounts = []struct{ source, target, fstype string }{
	{"proc", "proc", "proc"},
	{"sysfs", "sys", "sysfs"},
	{"devtmpfs", "dev", "devtmpfs"},
	{"securityfs", "sys/kernel/security", "securityfs"},
	{"tmpfs", "run", "tmpfs"},
}

// RunHook mounts what is missing, copies the carried store to the persistent store
// directory, runs rejoin, and prints a one-line verdict on the console. It never fails the
// boot: every problem ends up in the verdict line and HookResult.Err.
func RunHook(ctx context.Context, o HookOptions, rj Rejoiner) *HookResult {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Handoff == "" {
		o.Handoff = HandoffDir
	}
	if o.Store == "" {
		o.Store = "run/imakexec"
	}
	if o.Mounter == nil {
		o.Mounter = SysMount
	}
	if o.Console == nil {
		o.Console = io.Discard
	}
	res := &HookResult{}
	if o.Mount {
		for _, m := range hookMounts {
			target := filepath.Join(o.Root, m.target)
			err := o.Mounter(m.source, target, m.fstype, unix.MS_NOSUID|unix.MS_NODEV*boolToUintptr(m.fstype != "devtmpfs"), "")
			if err != nil && !errors.Is(err, unix.EBUSY) {
				fmt.Fprintf(o.Console, "imakexec: mount %s on /%s: %v\n", m.fstype, m.target, err)
			}
		}
	}
	hdir := filepath.Join(o.Root, o.Handoff)
	store := filepath.Join(o.Root, o.Store)
	h, err := ReadHandoff(hdir)
	switch {
	case errors.Is(err, ErrNoHandoff):
		h = nil
	case err != nil:
		res.Err = err
		res.Line = "imakexec: NOT VERIFIED: " + oneLine(err.Error())
		fmt.Fprintln(o.Console, res.Line)
		return res
	default:
		if err := copyStore(h, store); err != nil {
			res.Err = err
			res.Line = "imakexec: NOT VERIFIED: copy handoff store: " + oneLine(err.Error())
			fmt.Fprintln(o.Console, res.Line)
			return res
		}
		if !o.KeepCopy {
			os.RemoveAll(hdir)
		}
	}
	res.Handoff = h
	v, err := rj.Rejoin(ctx, h, store)
	res.Verdict, res.Err = v, err
	switch {
	case err != nil:
		res.Line = "imakexec: NOT VERIFIED: " + oneLine(err.Error())
	case v != nil && v.Verified:
		res.Line = "imakexec: VERIFIED: " + oneLine(v.Summary)
	case v != nil:
		res.Line = "imakexec: NOT VERIFIED: " + oneLine(v.Summary)
	default:
		res.Line = "imakexec: NOT VERIFIED: rejoin gave no verdict"
	}
	if h == nil {
		res.Line += " (no handoff: cold boot or kexec without imakexec)"
	}
	fmt.Fprintln(o.Console, res.Line)
	return res
}

func boolToUintptr(b bool) uintptr {
	if b {
		return 1
	}
	return 0
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// copyStore writes the carried files into dir (0700), each 0600, crash-safe enough for a
// tmpfs: temp file, fsync, rename. Existing files of the same name are replaced; a
// symlink in the way is refused.
func copyStore(h *Handoff, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	for _, f := range h.Store.Files {
		if err := checkStoreName(f.Name); err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(f.Name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp")
		out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		_, werr := out.Write(f.Data)
		serr := out.Sync()
		cerr := out.Close()
		if err := errors.Join(werr, serr, cerr); err != nil {
			os.Remove(tmp)
			return err
		}
		if fi, err := os.Lstat(dst); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			os.Remove(tmp)
			return fmt.Errorf("%s is a symlink", dst)
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// HookFlagsFile is where the built initramfs keeps the hook's flags (one or more per
// line, '#' starts a comment); the hook reads it when started as uinit or /init.
const HookFlagsFile = "etc/imakexec/hook.flags"

// ReadHookFlags reads root/HookFlagsFile into arguments; a missing file gives none.
func ReadHookFlags(root string) ([]string, error) {
	b, err := readRegular(filepath.Join(root, HookFlagsFile), 64<<10)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var args []string
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		args = append(args, strings.Fields(line)...)
	}
	return args, nil
}

// IsHookArgv0 reports whether a program started as argv0 should run the hook: as u-root's
// uinit ("uinit"), or as the initramfs' /init when it is process 1.
func IsHookArgv0(argv0 string, pid int) bool {
	base := filepath.Base(argv0)
	return base == "uinit" || (base == "init" && pid == 1)
}
