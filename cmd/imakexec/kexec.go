package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// kexecCmd drains, hands the store over in an appended initrd archive, loads with
// kexec_file_load and jumps (design.md "kexec: where records get lost").
type kexecCmd struct {
	kernel, initrd, append_ string
	reuse                   bool
	store, proc, imaHash    string
	loadOnly, dryRun, force bool
	json, keylime           bool
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
	steps := &handoverSteps{paths: handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}, store: c.store, tpm: env.Global.TPM}
	defer steps.close()
	o := initramfs.KexecOptions{
		Kernel: c.kernel, Initrd: c.initrd, Cmdline: c.append_, ReuseCmdline: c.reuse,
		Store: c.store, LoadOnly: c.loadOnly, DryRun: c.dryRun, Force: c.force, IMAHash: c.imaHash,
		Proc: c.proc,
	}
	if env.Global.Verbose {
		// Each phase with the milliseconds since the process started, so that a slow
		// phase shows (the VM tests report them).
		o.Trace = func(ev string) {
			fmt.Fprintf(env.Stderr, "imakexec kexec: %s +%dms\n", ev, time.Since(processStart).Milliseconds())
		}
	}
	rep, err := initramfs.RunKexec(ctx, o, steps, initramfs.SysKexec{})
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

// digestList formats digests as "algo:hex, ..." in algorithm order.
func digestList(m map[string]string) string {
	var out []string
	for _, a := range slices.Sorted(maps.Keys(m)) {
		out = append(out, a+":"+m[a])
	}
	return strings.Join(out, ", ")
}

// handoverSteps adapts package handover to initramfs.Steps. The TPM opened by Inspect is
// kept for the drain.
type handoverSteps struct {
	paths  handover.Paths
	store  string
	tpm    string
	t      transport.TPMCloser
	tpmErr error
}

func (s *handoverSteps) close() {
	if s.t != nil {
		s.t.Close()
	}
}

func (s *handoverSteps) Inspect(ctx context.Context) (*initramfs.State, error) {
	s.t, s.tpmErr = handover.OpenTPM(s.tpm)
	var t transport.TPM
	if s.t != nil {
		t = s.t
	}
	st := handover.GetStatus(s.paths, s.store, t, s.tpm, s.tpmErr)
	out := &initramfs.State{
		TPM: s.t != nil && st.TPMErr == "", TPMDetail: st.TPM, StoreBound: true, Pending: int(st.Count),
		Backend: st.Backend, Banks: st.TPMBanks, Release: st.Release, BootID: st.BootID,
	}
	if st.TPMErr != "" {
		out.TPMDetail = st.TPMErr
	}
	if m := st.Store.BindingMatch; m != nil && !*m {
		out.StoreBound = false
		out.StoreDetail = st.Store.BindingNote
	}
	if ki, err := handover.ReadKernelInfo(s.paths); err == nil {
		out.IMAHash = ki.IMAHash()
	}
	return out, nil
}

// keepWritten bounds the bytes the last drain hands over (DrainOptions.KeepWritten). The
// last drain before a kexec moves only what was measured since the previous drain; a
// larger one leaves its files to be read again, and those reads recorded.
const keepWritten = 64 << 20

func (s *handoverSteps) Drain(ctx context.Context) (*initramfs.Drained, error) {
	if s.t == nil {
		return nil, fmt.Errorf("drain needs a TPM: %w", s.tpmErr)
	}
	res, err := handover.Drain(ctx, handover.DrainOptions{Paths: s.paths, StoreDir: s.store, TPM: s.t, KeepWritten: keepWritten})
	if err != nil {
		return nil, err
	}
	d := &initramfs.Drained{Records: int(res.Stored), Backend: res.Backend}
	if res.Carried {
		d.KernelCarries = int(res.Held - res.Retained)
	}
	// The store is listed from the directory (a directory read is not measured). The drain
	// hands over what it wrote: new segments whole, the lines it appended to the manifest;
	// the flow takes every other file from its copy read before the drain. A file it
	// cannot match (the bytes were not kept) is read again and recorded as a post-drain
	// read.
	whole := map[string][]byte{}
	written := map[string]handover.Segment{}
	for _, sg := range res.Segments {
		written[sg.File] = sg
	}
	if w := res.Written; w != nil {
		for _, f := range w.Segments {
			whole[f.Name] = f.Data
		}
		a := initramfs.Appended{From: w.ManifestFrom, Data: w.Manifest, PrevLineSHA256: w.ManifestPrev}
		if w.ManifestFrom == 0 {
			whole[w.ManifestName] = w.Manifest
		} else {
			d.Appended = map[string]initramfs.Appended{w.ManifestName: a}
		}
	}
	names, err := initramfs.ListStore(s.store)
	if err != nil {
		return nil, fmt.Errorf("list store after drain: %w", err)
	}
	d.Store = []initramfs.StoreFile{}
	for _, n := range names {
		fi, err := os.Lstat(filepath.Join(s.store, filepath.FromSlash(n)))
		if err != nil {
			return nil, fmt.Errorf("list store after drain: %w", err)
		}
		f := initramfs.StoreFile{Name: n, Size: fi.Size()}
		if data, ok := whole[n]; ok && int64(len(data)) == f.Size {
			f = initramfs.NewStoreFile(n, data)
		} else if sg, ok := written[n]; ok {
			f.SHA256 = sg.SHA256
		}
		d.Store = append(d.Store, f)
	}
	return d, nil
}
