package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// hookCmd is the initramfs boot hook: u-root's init runs it as /bin/uinit, or it is /init.
// It copies the carried store out of the rootfs, runs rejoin, prints a one-line verdict
// and hands the boot on.
type hookCmd struct {
	root, handoff, store string
	noMount              bool
	next                 string
	nextArgs             []string
}

func init() { register(&hookCmd{}) }

// hookArgs returns the arguments when the binary was started as u-root's uinit or as
// /init (pid 1): the hook with the flags the image carries. As /init the kernel passes
// unknown command-line words as arguments; they are not ours, so they are dropped.
// ok is false for an ordinary start.
func hookArgs(argv []string, pid int) (args []string, ok bool) {
	if len(argv) == 0 || !initramfs.IsHookArgv0(argv[0], pid) {
		return nil, false
	}
	flags, err := initramfs.ReadHookFlags("/")
	if err != nil {
		fmt.Fprintf(os.Stderr, "imakexec: %s: %v\n", initramfs.HookFlagsFile, err)
	}
	args = append([]string{"hook"}, flags...)
	if pid != 1 {
		args = append(args, argv[1:]...)
	}
	return args, true
}

func (*hookCmd) Name() string { return "hook" }
func (*hookCmd) Synopsis() string {
	return "initramfs boot hook: copy the handoff, rejoin, print the verdict, go on"
}
func (*hookCmd) Usage() string {
	return "[--store DIR] [--handoff DIR] [--next PATH [--next-arg ARG...]] [--no-mount]"
}

func (c *hookCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.root, "root", "/", "root of the initramfs")
	fs.StringVar(&c.handoff, "handoff", "/"+initramfs.HandoffDir, "where the kernel unpacked the handoff archive")
	fs.StringVar(&c.store, "store", "/run/imakexec", "persistent store directory the carried store is copied to")
	fs.BoolVar(&c.noMount, "no-mount", false, "do not mount proc, sys, dev, securityfs and /run")
	fs.StringVar(&c.next, "next", "", "program to exec afterwards (e.g. /sbin/init); default: return to u-root's init, or /bin/sh when pid 1")
	fs.StringArrayVar(&c.nextArgs, "next-arg", nil, "argument for --next (repeatable)")
}

func (c *hookCmd) Run(ctx context.Context, env *Env, args []string) error {
	rel := func(p string) string {
		if len(p) > 0 && p[0] == '/' {
			return p[1:]
		}
		return p
	}
	console := env.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0); err == nil && os.Getpid() == 1 {
		defer f.Close()
		console = f
	}
	res := initramfs.RunHook(ctx, initramfs.HookOptions{
		Root: c.root, Handoff: rel(c.handoff), Store: rel(c.store), Mount: !c.noMount, Console: console,
	}, hookRejoiner{root: c.root, tpm: env.Global.TPM})
	next := c.next
	if next == "" && os.Getpid() == 1 {
		for _, p := range []string{"/sbin/init", "/bin/sh"} {
			if _, err := os.Stat(p); err == nil {
				next = p
				break
			}
		}
	}
	if next != "" {
		argv := append([]string{next}, c.nextArgs...)
		err := syscall.Exec(next, argv, os.Environ())
		fmt.Fprintf(console, "imakexec: exec %s: %v\n", next, err)
	}
	if os.Getpid() == 1 {
		// pid 1 must not exit (the kernel would panic): keep reaping.
		fmt.Fprintln(console, "imakexec: nothing to hand the boot to; halting here")
		for {
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(-1, &ws, 0, nil); err != nil {
				time.Sleep(time.Minute)
			}
		}
	}
	if res.Err != nil {
		return notVerified(res.Err)
	}
	if res.Verdict == nil || !res.Verdict.Verified {
		return notVerified(errors.New(res.Line))
	}
	return nil
}

// hookRejoiner adapts handover.Rejoin to initramfs.Rejoiner: the hook has copied the
// carried store into storeDir; the handoff describes the kexec window.
type hookRejoiner struct {
	root string
	tpm  string
}

func (r hookRejoiner) Rejoin(ctx context.Context, h *initramfs.Handoff, storeDir string) (*initramfs.Verdict, error) {
	t, err := handover.OpenTPM(r.tpm)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	paths := handover.Paths{Securityfs: filepath.Join(r.root, "sys/kernel/security"), Proc: filepath.Join(r.root, "proc")}
	res, err := handover.Rejoin(ctx, handover.RejoinOptions{Paths: paths, StoreDir: storeDir, TPM: t,
		Window: handover.WindowFromHandoff(h, handover.ReadProcCmdline(paths))})
	if err != nil {
		return &initramfs.Verdict{Verified: false, Summary: err.Error()}, nil
	}
	v := res.Verify
	var banks []string
	for _, b := range v.Banks {
		banks = append(banks, b.Name)
	}
	sum := fmt.Sprintf("%d records, generation %d, %s match the TPM; %s", v.Records, res.Generation, strings.Join(banks, "+"), res.Description)
	return &initramfs.Verdict{Verified: true, Summary: sum}, nil // err == nil: v is the proof
}
