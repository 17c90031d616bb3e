package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// shutdownCmd is the clean live update of a systemd host: the last drain (ExecStop of
// imakexec-shutdown.service) and the check-and-jump at the end of systemd-shutdown
// (system-shutdown/imakexec). See handover.ShutdownDrain.
type shutdownCmd struct {
	store, mark, proc, sysfs string
	loaded                   string
	allowUnproven, json      bool
}

func init() { register(&shutdownCmd{}) }

func (*shutdownCmd) Name() string { return "shutdown" }
func (*shutdownCmd) Synopsis() string {
	return "last drain of a kexec shutdown, and the check and jump at its end (systemd hosts)"
}
func (*shutdownCmd) Usage() string {
	return `drain|check|jump [--store DIR] [--mark FILE] [--allow-unproven]

  drain  (imakexec-shutdown.service ExecStop, after every service, before local
         filesystems unmount) when a kexec image is loaded: open for reading what the rest
         of the shutdown runs, so IMA measures none of it again; drain; note the kernel's
         record counters in the mark. Without a loaded image it does nothing.
  check  compare the counters with the mark: exit 0 when no record was measured after the
         last drain, 1 naming them otherwise.
  jump   (system-shutdown/imakexec, root already read-only) check, then make the jump with
         reboot(LINUX_REBOOT_CMD_KEXEC). When the check fails it unloads the kexec image,
         so that systemd-shutdown reboots cold (a fresh, verifiable TPM power cycle) rather
         than jump into a log the next kernel cannot prove; --allow-unproven jumps anyway.`
}

func (c *shutdownCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.mark, "mark", handover.DefaultShutdownMark, "where the last drain notes the kernel's counters (on a tmpfs that lasts until the jump)")
	fs.StringVar(&c.loaded, "loaded-mark", handover.DefaultLoadedMark, "left by imakexec kexec --load-only; without it (another tool loaded the image) jump does nothing")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point")
	fs.StringVar(&c.sysfs, "sysfs", "/sys", "sysfs mount point (kernel/kexec_loaded)")
	fs.BoolVar(&c.allowUnproven, "allow-unproven", false, "jump even when records were measured after the last drain (the next rejoin will not verify)")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
}

func (c *shutdownCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 1 {
		return usageErrorf("shutdown takes one of drain, check, jump")
	}
	o := handover.ShutdownOptions{Paths: handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc},
		Sysfs: c.sysfs, StoreDir: c.store, Mark: c.mark}
	switch args[0] {
	case "drain":
		t, err := handover.OpenTPM(env.Global.TPM)
		if err != nil {
			return err
		}
		defer t.Close()
		o.TPM = t
		res, err := handover.ShutdownDrain(ctx, o)
		if c.json && res != nil {
			out := map[string]any{"skipped": res.Skipped, "pre_read": res.PreRead, "mark": res.Mark}
			if err != nil {
				out["error"] = err.Error()
			}
			if jerr := writeJSON(env.Stdout, out); jerr != nil && err == nil {
				err = jerr
			}
		} else if res != nil {
			switch {
			case res.Skipped != "":
				fmt.Fprintf(env.Stdout, "imakexec shutdown: %s\n", res.Skipped)
			case res.Mark != nil:
				fmt.Fprintf(env.Stdout, "imakexec shutdown: last drain done (%d drains, %d records stored, %s); %d files pre-read; the kernel holds %d records, all in %s\n",
					res.Mark.Drains, res.Mark.Stored, res.Mark.Backend, len(res.PreRead), res.Mark.Count, c.store)
			}
		}
		return err
	case "check":
		m, err := handover.ShutdownCheck(o)
		if err != nil {
			return notVerified(err)
		}
		fmt.Fprintf(env.Stdout, "imakexec shutdown: no record measured after the last drain (%s, %d records)\n", m.Time, m.Count)
		return nil
	case "jump":
		return c.jump(env, o)
	}
	return usageErrorf("unknown shutdown step %q (want drain, check or jump)", args[0])
}

// jump runs inside systemd-shutdown: stdout and stderr go to the console; the kernel log
// gets the verdict too (journald is gone by now).
func (c *shutdownCmd) jump(env *Env, o handover.ShutdownOptions) error {
	say := func(level int, format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintf(env.Stderr, "imakexec: %s\n", msg)
		if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
			fmt.Fprintf(f, "<%d>imakexec: %s\n", level, msg)
			f.Close()
		}
	}
	loaded, err := handover.KexecLoaded(o.Sysfs)
	if err != nil || !loaded {
		say(6, "no kexec image loaded; leaving the reboot to systemd-shutdown")
		return nil
	}
	if !handover.LoadedByImakexec(c.loaded, c.proc) {
		say(5, "the kexec image was not loaded by imakexec kexec --load-only in this boot; leaving the jump to systemd-shutdown")
		return nil
	}
	if _, err := handover.ShutdownCheck(o); err != nil {
		if !c.allowUnproven {
			say(3, "refusing the live update: %v", err)
			if uerr := unix.KexecFileLoad(-1, -1, "", unix.KEXEC_FILE_UNLOAD); uerr != nil {
				say(3, "could not unload the kexec image (%v): the jump will happen and the next rejoin will not verify", uerr)
				return notVerified(err)
			}
			say(3, "kexec image unloaded: systemd-shutdown reboots cold; the next boot starts a new, verifiable chain")
			return notVerified(err)
		}
		say(4, "jumping although %v (--allow-unproven)", err)
	} else {
		say(6, "every record of this boot is in the store; jumping")
	}
	kx := initramfs.SysKexec{}
	kx.Sync()
	if err := kx.Reboot(); err != nil {
		say(3, "%v; systemd-shutdown goes on with kexec -e", err)
		return err
	}
	return nil
}
