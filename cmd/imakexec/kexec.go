package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// kexecCmd drains, hands the store over in an appended initrd archive, loads with
// kexec_file_load and jumps (docs/kernel.md, "The kexec window").
type kexecCmd struct {
	kernel, initrd, append_ string
	reuse                   bool
	store, proc, imaHash    string
	loadOnly, dryRun, force bool
	json, keylime           bool
	carry                   string
}

func init() { register(&kexecCmd{}) }

// processStart is taken when the package is initialised, i.e. at process start; the
// --verbose trace counts from it.
var processStart = time.Now()

func (*kexecCmd) Name() string { return "kexec" }
func (*kexecCmd) Synopsis() string {
	return "drain, hand the log over in the initrd, kexec_file_load and jump"
}
func (*kexecCmd) Usage() string {
	return "--kernel K [--initrd I] [--append CMDLINE | --reuse-cmdline] [--store DIR] [--load-only] [--dry-run] [--force] [--json]"
}

func (c *kexecCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.kernel, "kernel", "", "kernel image to load (required)")
	fs.StringVar(&c.initrd, "initrd", "", "initrd to load; the handoff archive is appended to a copy in memory")
	fs.StringVar(&c.append_, "append", "", "command line of the next kernel")
	fs.BoolVar(&c.reuse, "reuse-cmdline", false, "use the running kernel's command line")
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point")
	fs.StringVar(&c.imaHash, "ima-hash", "", "ima_hash algorithm of the running kernel (default: from the log, ima_hash=, else sha256)")
	fs.BoolVar(&c.loadOnly, "load-only", false, "load but do not jump (systemctl kexec or another tool executes it)")
	fs.BoolVar(&c.dryRun, "dry-run", false, "print the plan (what is drained, carried, predicted) and change nothing")
	fs.BoolVar(&c.force, "force", false, "jump even when the log could not be proven afterwards")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON")
	fs.StringVar(&c.carry, "carry", "auto", "what the initrd carries: store (every store file), window (the kexec-window description; the store stays on disk) or auto (window when the store is on a persistent filesystem)")
	fs.BoolVar(&c.keylime, "keylime-excludes", false, "print a Keylime runtime policy for this kexec's records instead of the report (with --dry-run or --load-only)")
}

func (c *kexecCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("kexec takes no arguments")
	}
	if c.kernel == "" {
		return usageErrorf("--kernel is required")
	}
	if c.append_ != "" && c.reuse {
		return usageErrorf("--append and --reuse-cmdline exclude each other")
	}
	steps := handover.NewKexecSteps(handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}, c.store, env.Global.TPM)
	defer steps.Close()
	o := initramfs.KexecOptions{
		Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.append_, ReuseCmdline: c.reuse,
		Store: c.store, LoadOnly: c.loadOnly, DryRun: c.dryRun, Force: c.force, IMAHash: c.imaHash,
		Proc: c.proc,
	}
	var err error
	if o.StoreOnDisk, err = storeOnDisk(c.carry, c.store); err != nil {
		return err
	}
	if env.Global.Verbose {
		// Each phase with the milliseconds since the process started, so that a slow
		// phase shows (the VM tests report them).
		o.Trace = func(ev string) {
			fmt.Fprintf(env.Stderr, "imakexec kexec: %s +%dms\n", ev, time.Since(processStart).Milliseconds())
		}
	}
	rep, err := initramfs.RunKexec(ctx, o, steps, initramfs.SysKexec{})
	if err == nil && rep != nil && rep.Loaded && c.loadOnly {
		noteLoaded(env, rep)
	}
	if c.keylime && rep != nil && rep.Kernel.Path != "" {
		if jerr := writeJSON(env.Stdout, keylimeExcludes(rep)); jerr != nil && err == nil {
			err = jerr
		}
		return err
	}
	if rep != nil && (rep.Kernel.Path != "" || len(rep.Refusals) > 0) {
		if c.json {
			if jerr := writeJSON(env.Stdout, rep); jerr != nil && err == nil {
				err = jerr
			}
		} else {
			printKexecReport(env, rep)
		}
	}
	return err
}

func printKexecReport(env *Env, r *initramfs.KexecReport) {
	w := env.Stdout
	switch {
	case r.DryRun:
		fmt.Fprintln(w, "plan (dry run, nothing changed):")
	case r.Loaded && r.LoadOnly:
		fmt.Fprintln(w, "loaded (not executed):")
	case r.Loaded:
		fmt.Fprintln(w, "loaded, jumping:")
	default:
		fmt.Fprintln(w, "not loaded:")
	}
	ok := r.OldKernel
	fmt.Fprintf(w, "  running  %s, ima_hash %s (%s), templates %s\n", orUnknown(ok.Release), ok.IMAHash, hashSource(ok), orUnknown(strings.Join(ok.Templates, ", ")))
	fmt.Fprintf(w, "           carries its list across kexec: %s; policy measures kexec: %s\n", yesNo(ok.IMAKexec, ok.IMAKexecFrom), boolKnown(ok.MeasuresKexec))
	fmt.Fprintf(w, "  kernel   %s (%s, %d bytes, %s)\n", r.Kernel.Path, r.Kernel.ResolvedPath, r.Kernel.Size, digestList(r.Kernel.Digests))
	if r.Handoff != nil && r.Handoff.Initrd.BasePath != "" {
		fmt.Fprintf(w, "  initrd   %s (%d bytes, segments %s) + handoff archive\n", r.Handoff.Initrd.BasePath, r.Handoff.Initrd.BaseSize, strings.Join(r.Segments, ","))
	} else {
		fmt.Fprintln(w, "  initrd   handoff archive only")
	}
	fmt.Fprintf(w, "  cmdline  %s\n", r.Cmdline)
	if r.Pending >= 0 {
		fmt.Fprintf(w, "  drain    %d records held by the kernel now\n", r.Pending)
	}
	if r.Drained != nil {
		fmt.Fprintf(w, "  drained  %d records (%s)\n", r.Drained.Records, r.Drained.Backend)
	}
	fmt.Fprintf(w, "  carry    %d store files, %d bytes from %s\n", r.Store.Files, r.Store.Bytes, r.Store.Dir)
	fmt.Fprintln(w, "  kexec-window records rejoin will try:")
	for _, p := range r.Predicted {
		fmt.Fprintf(w, "    %-22s %s %s (%s)\n", p.Hook, p.Name, p.Digest, p.Note)
	}
	for _, f := range r.Forced {
		fmt.Fprintf(w, "  forced   %s\n", f)
	}
	for _, x := range r.Refusals {
		fmt.Fprintf(w, "  refusal  %s: %s (%s)\n", x.Code, x.Reason, x.Remedy)
	}
	for _, x := range r.Warnings {
		fmt.Fprintf(w, "  warning  %s\n", x)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func hashSource(o initramfs.OldKernel) string {
	if o.IMAHashFrom != "" {
		return o.IMAHashFrom
	}
	return o.IMAHashSource
}

func yesNo(v, from string) string {
	if v == "" {
		return "unknown"
	}
	if from != "" {
		return v + " (" + from + ")"
	}
	return v
}

func boolKnown(b *bool) string {
	switch {
	case b == nil:
		return "unknown (policy not readable)"
	case *b:
		return "yes"
	}
	return "no"
}

// digestList formats digests as "algo:hex, ..." in algorithm order.
func digestList(m map[string]string) string {
	var out []string
	for _, a := range slices.Sorted(maps.Keys(m)) {
		out = append(out, a+":"+m[a])
	}
	return strings.Join(out, ", ")
}
