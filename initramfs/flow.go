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
	"time"

	"github.com/imakexec/imakexec/internal/kcmdline"
	"github.com/imakexec/imakexec/internal/storefs"
)

// KexecOptions configure RunKexec.
type KexecOptions struct {
	Kernel       string // kernel image, required
	Initrd       string // base initrd; "" for none (the handoff archive is the whole initrd)
	Cmdline      string // --append
	ReuseCmdline bool   // take the running kernel's /proc/cmdline
	Store        string // handoff store directory
	LoadOnly     bool   // load, do not jump
	StoreOnDisk  bool   // the store is on a persistent filesystem: carry only its listing (Handoff.DiskStore)
	DryRun       bool   // read inputs and report the plan; no drain, no load
	Force        bool   // go on despite refusals (except the ones that cannot be forced)
	IMAHash      string // override the ima_hash algorithm

	Proc   string                               // procfs mount, default /proc
	Open   func(name string) (InputFile, error) // default: os.OpenFile O_RDONLY|O_CLOEXEC
	Trace  func(event string)                   // phase events, for tests and --verbose
	Now    func() time.Time
	Limits Limits

	// OpenStore opens the store file rel (with '/') of the store directory dir; default
	// storefs.OpenFile: openat from the store's descriptor, no symlink followed, no FIFO or
	// device, owner and mode checked. Tests wrap it to trace the opens.
	OpenStore func(dir, rel string) (InputFile, error)
}

// KexecReport is what RunKexec did or, with DryRun, would do.
type KexecReport struct {
	DryRun    bool           `json:"dry_run"`
	LoadOnly  bool           `json:"load_only"`
	Loaded    bool           `json:"loaded"`
	OldKernel OldKernel      `json:"old_kernel"` // the running kernel as the plan sees it
	Kernel    KernelImage    `json:"kernel"`
	Initrd    InitrdImage    `json:"initrd"`
	InitrdLen int64          `json:"initrd_size"`
	Segments  []string       `json:"base_initrd_segments,omitempty"` // "plain", "gzip", ...
	Cmdline   string         `json:"cmdline"`                        // final (dry run: without the digest)
	Pending   int            `json:"pending_records"`
	Drained   *DrainInfo     `json:"drained,omitempty"`
	Store     StoreSummary   `json:"store"`
	Predicted []WindowRecord `json:"predicted_window_records"`
	Refusals  []Refusal      `json:"refusals,omitempty"`
	Forced    []string       `json:"forced,omitempty"`
	Warnings  []string       `json:"warnings,omitempty"`
	Handoff   *Handoff       `json:"-"`
}

// StoreSummary counts the carried store.
type StoreSummary struct {
	Dir   string `json:"dir"`
	Files int    `json:"files"`
	Bytes int64  `json:"bytes"`
}

func (o *KexecOptions) defaults() {
	if o.Proc == "" {
		o.Proc = "/proc"
	}
	if o.Open == nil {
		o.Open = func(name string) (InputFile, error) {
			return os.OpenFile(name, os.O_RDONLY|syscall.O_CLOEXEC, 0)
		}
	}
	if o.OpenStore == nil {
		o.OpenStore = func(dir, rel string) (InputFile, error) { return storefs.OpenFile(dir, rel) }
	}
	if o.Trace == nil {
		o.Trace = func(string) {}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// RunKexec performs the handover in the order that leaves the kexec window empty or
// predictable (docs/kernel.md, "The kexec window"). Each phase is one function:
//
//  1. inspect: refusals are decided before anything is read or changed;
//  2. readInputs: open and hash the kernel (the open is itself a FILE_CHECK measurement
//     under common policies, so it must come before the drain), copy the base initrd
//     into a memfd (never opened by path), read the command line, read the store;
//  3. lastDrain: drain for the last time; no input is opened after it;
//  4. writeHandoff: only writes: append the handoff archive to the memfd, seal it, put
//     its digest on the command line;
//  5. load: kexec_file_load; 6. jump: unless LoadOnly, sync and
//     reboot(LINUX_REBOOT_CMD_KEXEC).
//
// With DryRun it stops after step 2 and reports the plan. Refusals return a *RefusedError
// (with the report) unless Force; kexec_load_disabled cannot be forced.
func RunKexec(ctx context.Context, o KexecOptions, steps Steps, kx Kexec) (*KexecReport, error) {
	o.defaults()
	if o.Kernel == "" {
		return nil, errors.New("no kernel image given")
	}
	if o.Store == "" {
		return nil, errors.New("no store directory given")
	}
	rep := &KexecReport{DryRun: o.DryRun, LoadOnly: o.LoadOnly, Pending: -1, Store: StoreSummary{Dir: o.Store}}

	pl, err := inspect(ctx, o, steps)
	if err != nil {
		return nil, err
	}
	rep.Pending = pl.state.Pending
	h := pl.handoff

	in, err := readInputs(o, pl)
	if in != nil {
		defer in.close()
	}
	rep.Kernel, rep.Warnings, rep.OldKernel = h.Kernel, pl.warnings, h.OldKernel
	if err != nil {
		return rep, err
	}
	rep.Segments = in.segments
	rep.Refusals = pl.refusals
	rep.Predicted = predictWindow(h, "")
	rep.Cmdline = in.cmdline
	rep.Handoff = h
	blocking := pl.blocking(o.Force)
	rep.Forced = h.Forced
	if len(blocking) > 0 {
		return rep, &RefusedError{Refusals: blocking}
	}
	if o.DryRun {
		rep.Store.Files, rep.Store.Bytes = len(in.snapshot), storeBytes(in.snapshot)
		return rep, nil
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	files, drained, err := lastDrain(ctx, o, steps, pl, in.snapshot)
	if drained {
		rep.Drained = &h.Drain
	}
	if err != nil {
		return rep, err
	}
	rep.Store.Files, rep.Store.Bytes = len(files), storeBytes(files)

	out, err := writeHandoff(o, h, in, files)
	if err != nil {
		return rep, err
	}
	rep.Cmdline, rep.InitrdLen = out.cmdline, out.size
	rep.Initrd = h.Initrd
	rep.Predicted = predictWindow(h, out.param)

	if err := ctx.Err(); err != nil {
		return rep, err
	}
	if err := load(o, kx, in, out.cmdline); err != nil {
		return rep, err
	}
	rep.Loaded = true
	if o.LoadOnly {
		rep.Warnings = append(rep.Warnings, "loaded only: records measured between now and the jump are carried only by a 6.16+ kernel with CONFIG_IMA_KEXEC; jump soon (systemctl kexec)")
		return rep, nil
	}
	return rep, jump(o, kx)
}

// plan is what the inspect phase decided: the handoff as far as it is known before any
// input is read, the ima_hash algorithm, and the refusals so far (readInputs adds the
// ones its inputs show).
type plan struct {
	state    *State
	handoff  *Handoff
	algo     string // ima_hash, lower case
	refusals []Refusal
	warnings []string
}

func (p *plan) refuse(code, reason, remedy string, forcible bool) {
	p.refusals = append(p.refusals, Refusal{Code: code, Reason: reason, Remedy: remedy, Forcible: forcible})
}

// blocking returns the refusals that stop the run; with force, the forcible ones are
// recorded in the handoff instead.
func (p *plan) blocking(force bool) []Refusal {
	var out []Refusal
	for _, r := range p.refusals {
		if !r.Forcible || !force {
			out = append(out, r)
		} else {
			p.handoff.Forced = append(p.handoff.Forced, r.Code+": "+r.Reason)
		}
	}
	return out
}

// inspect is phase 1: ask the handover what the running kernel and the store are, and
// decide the refusals that need no input.
func inspect(ctx context.Context, o KexecOptions, steps Steps) (*plan, error) {
	o.Trace("inspect")
	st, err := steps.Inspect(ctx)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	h := &Handoff{Format: HandoffFormat, Version: HandoffVersion, Created: o.Now().UTC().Format(time.RFC3339),
		LoadOnly: o.LoadOnly}
	h.OldKernel = OldKernel{Release: st.Release, BootID: st.BootID, Templates: st.Templates, Banks: st.Banks,
		IMAKexec: st.IMAKexec, IMAKexecFrom: st.IMAKexecFrom, MeasuresKexec: st.MeasuresKexec}
	p := &plan{state: st, handoff: h}
	p.warnings = append(p.warnings, st.Notes...)
	if r := kexecDisabled(o.Proc); r != "" {
		p.refuse("kexec-disabled", r, "cold boot instead", false)
	}
	if !st.TPM {
		p.refuse("no-tpm", "no TPM: nothing can prove the log after the jump ("+st.TPMDetail+")",
			"check --tpm, or use --force to jump without proof", true)
	}
	if !st.StoreBound {
		p.refuse("foreign-store", "the store is bound to another TPM power cycle ("+st.StoreDetail+")",
			"archive the store (imakexec drain starts a new one) or use another --store", true)
	}
	algo, src := o.IMAHash, "flag"
	if algo == "" {
		algo, src = st.IMAHash, "log"
	}
	if algo == "" {
		// The kernel takes the first ima_hash= (hash_setup_done); CONFIG_IMA_DEFAULT_HASH
		// never shows on the command line, hence the log comes first.
		if b, err := readKernelFile(filepath.Join(o.Proc, "cmdline"), maxCmdline); err == nil {
			if v := kcmdline.Value(string(b), "ima_hash"); v != "" {
				algo, src = v, "cmdline"
			}
		}
	}
	if algo == "" {
		algo, src = "sha256", "assumed"
		p.warnings = append(p.warnings, "ima_hash not found in the log or on the command line; assuming sha256 (CONFIG_IMA_DEFAULT_HASH of common distributions)")
	}
	algo = strings.ToLower(algo)
	p.algo = algo
	h.OldKernel.IMAHash, h.OldKernel.IMAHashSource = algo, src
	if src == "log" {
		h.OldKernel.IMAHashFrom = st.IMAHashFrom
	}
	if supportedIMAHash[algo] == nil {
		p.refuse("unpredictable", fmt.Sprintf("ima_hash %q: imakexec cannot compute the initrd digest the window record holds", algo),
			"boot the old kernel with ima_hash=sha256, or use --force", true)
	}
	for _, t := range st.Templates {
		if bad := unpredictableFields(t); len(bad) > 0 {
			p.refuse("unpredictable", fmt.Sprintf("template %q has fields %s that imakexec cannot predict for the kexec-window records", t, strings.Join(bad, ",")),
				"use a policy with the ima-ng or ima-sig template for KEXEC_* rules, or --force", true)
		}
	}
	if len(st.Templates) == 0 {
		p.warnings = append(p.warnings, "templates in use are unknown; rejoin will try the built-in ones")
	}
	if st.MeasuresKexec != nil && !*st.MeasuresKexec {
		p.warnings = append(p.warnings, "the IMA policy measures none of the kexec functions: kexec_file_load adds no window record")
	}
	return p, nil
}

// inputs are what readInputs read and keeps open for the load.
type inputs struct {
	kernel   InputFile
	memfd    *os.File // nil in a dry run
	hashes   *windowHashers
	segments []string // the base initrd's segments ("plain", "zstd", ...)
	cmdline  string   // the next kernel's command line without CmdlineParam
	snapshot []StoreFile
}

func (in *inputs) close() {
	if in.kernel != nil {
		in.kernel.Close()
	}
	if in.memfd != nil {
		in.memfd.Close()
	}
}

// readInputs is phase 2: every input is read now, before the last drain, so that the
// measurements the reads cause are drained too. The kernel and the initrd are hashed only
// in the algorithms the kexec-window records can hold (windowAlgos).
func readInputs(o KexecOptions, p *plan) (*inputs, error) {
	h := p.handoff
	algos := windowAlgos(p.algo, p.state.Templates)
	kern, kf, err := readKernel(o, algos, p.state.Templates)
	if err != nil {
		return nil, err
	}
	in := &inputs{kernel: kf}
	h.Kernel = kern
	if kern.AppendedSig && templatesUse(p.state.Templates, "modsig") {
		p.refuse("unpredictable", "the kernel image has an appended signature and a template records modsig; its exact bytes in the record are not predicted",
			"use a template without modsig for KEXEC_KERNEL_CHECK, or --force", true)
	}
	in.hashes = newWindowHashers(algos)
	if !o.DryRun {
		in.memfd, err = createMemfd()
		if err != nil {
			return in, err
		}
		o.Trace("memfd")
	}
	if o.Initrd != "" {
		n, resolved, segs, err := readInitrd(o, in.memfd, in.hashes, &p.refusals, &p.warnings)
		if err != nil {
			return in, err
		}
		h.Initrd.BasePath, h.Initrd.BaseResolved, h.Initrd.BaseSize = o.Initrd, resolved, n
		h.Initrd.BaseDigests = in.hashes.base()
		in.segments = segs
	}
	base, source, err := baseCmdline(o)
	if err != nil {
		return in, err
	}
	if kcmdline.Has(o.Cmdline, CmdlineParam) {
		p.warnings = append(p.warnings, "removed "+CmdlineParam+"= from the given command line: imakexec sets it")
	}
	h.Cmdline = Cmdline{Base: base, Source: source, Param: CmdlineParam}
	in.cmdline = base
	in.snapshot, err = readStore(o)
	if err != nil {
		return in, err
	}
	return in, nil
}

// lastDrain is phase 3: the last drain, and the store as it left it, taken from the
// drain's result and the pre-drain copy. No input is opened after the drain starts
// (except the recorded fallback of storeAfterDrain). drained says whether the drain
// itself succeeded (its result is in the handoff).
func lastDrain(ctx context.Context, o KexecOptions, steps Steps, p *plan, snapshot []StoreFile) (files []StoreFile, drained bool, err error) {
	o.Trace("drain")
	dr, err := steps.Drain(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("drain: %w", err)
	}
	o.Trace("archive")
	h := p.handoff
	h.Drain = DrainInfo{Records: dr.Records, KernelCarries: dr.KernelCarries, Backend: dr.Backend}
	files, reads, err := storeAfterDrain(o, snapshot, dr, p.algo)
	if err != nil {
		return nil, true, err
	}
	h.PostDrainReads = reads
	if o.StoreOnDisk {
		h.DiskStore = &StoreInfo{Dir: o.Store}
		for _, f := range files {
			h.DiskStore.Files = append(h.DiskStore.Files, StoreFile{Name: f.Name, Size: f.Size, SHA256: f.SHA256})
		}
		files = nil
	}
	return files, true, nil
}

// written is what writeHandoff produced.
type written struct {
	param   string // the value of CmdlineParam: the initrd's digests
	cmdline string // the next kernel's whole command line
	size    int64  // bytes of the initrd handed to the kernel
}

// writeHandoff is phase 4, writes only: the handoff archive after the base initrd in the
// memfd, the seal, a read-back of the archive from the memfd (an fd, not a path: not
// measured), and the command line with the initrd's digests.
func writeHandoff(o KexecOptions, h *Handoff, in *inputs, files []StoreFile) (*written, error) {
	h.Initrd.MemfdName = MemfdName
	h.Initrd.ResolvedPath, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", in.memfd.Fd()))
	h.Initrd.Sealed = true
	h.Initrd.Padding = PadLen(h.Initrd.BaseSize)
	h.Initrd.ArchiveStart = h.Initrd.BaseSize + h.Initrd.Padding
	arch, err := HandoffArchive(h, files)
	if err != nil {
		return nil, fmt.Errorf("build handoff archive: %w", err)
	}
	o.Trace("write-handoff")
	if _, err := AppendArchive(io.MultiWriter(in.memfd, in.hashes), h.Initrd.BaseSize, arch); err != nil {
		return nil, fmt.Errorf("write handoff to memfd: %w", err)
	}
	if err := sealMemfd(in.memfd); err != nil {
		return nil, err
	}
	if _, err := ReadImageHandoff(io.NewSectionReader(in.memfd, h.Initrd.ArchiveStart, int64(len(arch))), int64(len(arch)), o.Limits); err != nil {
		return nil, fmt.Errorf("read back handoff archive: %w", err)
	}
	param := in.hashes.param()
	return &written{
		param:   param,
		cmdline: strings.TrimSpace(in.cmdline + " " + CmdlineParam + "=" + param),
		size:    h.Initrd.ArchiveStart + int64(len(arch)),
	}, nil
}

// load is phase 5: kexec_file_load with the kernel opened in phase 2 and the memfd.
func load(o KexecOptions, kx Kexec, in *inputs, cmdline string) error {
	o.Trace("load")
	if err := kx.FileLoad(int(in.kernel.Fd()), int(in.memfd.Fd()), cmdline); err != nil {
		return err
	}
	o.Trace("loaded")
	return nil
}

// jump is phase 6: sync, then reboot(LINUX_REBOOT_CMD_KEXEC), which returns only on failure.
func jump(o KexecOptions, kx Kexec) error {
	o.Trace("sync")
	kx.Sync()
	o.Trace("reboot")
	return kx.Reboot()
}
