package initramfs

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Steps are the handover operations the kexec flow needs. The command adapts package
// handover to it; tests use a fake that records the calls.
type Steps interface {
	// Inspect reports what the flow decides on, changing nothing.
	Inspect(ctx context.Context) (*State, error)
	// Drain moves every record the kernel holds into the store: the last drain before the
	// load. From its start on, the flow opens no input for reading.
	Drain(ctx context.Context) (*Drained, error)
}

// State is what Inspect reports.
type State struct {
	TPM        bool   // a TPM answers; without one the log cannot be proven after the jump
	TPMDetail  string // why not, or which TPM
	StoreBound bool   // the store is empty or bound to the current TPM power cycle
	// StoreDetail says what the binding is, e.g. "store resetCount 3, TPM resetCount 4".
	StoreDetail string
	Pending     int    // records the drain would move now; -1 when unknown
	Backend     string // drain backend (staged, delete-N, trim-log, snapshot)
	IMAHash     string // ima_hash from the log's d-ng prefixes; "" when unknown
	Templates   []string
	Banks       []string
	IMAKexec    string // "yes"/"no"/"": the kernel carries its list across kexec
	Release     string
	BootID      string
	// MeasuresKexec is true/false when the policy is known to measure (or not) the
	// KEXEC_* hooks; nil when unknown.
	MeasuresKexec *bool
}

// Drained is the result of the last drain.
type Drained struct {
	Records       int
	KernelCarries int
	Backend       string
	// Store lists every file of the store after the drain. Data is set for files the drain
	// wrote whole (it has the bytes); Appended covers files it appended to; for others,
	// Size and SHA256 let the flow use its copy read before the drain. A file the flow
	// cannot match is read again after the drain and recorded in Handoff.PostDrainReads
	// (it may be a FILE_CHECK record in the window). When Store is nil, the flow carries
	// its pre-drain copy as it is.
	Store []StoreFile
	// Appended holds, by store file name, the bytes the drain appended to a file it did
	// not rewrite (the manifest). The flow joins its pre-drain copy, cut at From, with
	// them, so that it need not read the file again.
	Appended map[string]Appended
}

// Appended is what a drain appended to one store file.
type Appended struct {
	// From is the file's length when the drain took the store (0: the drain wrote the
	// file from scratch, and Data is all of it).
	From int64
	// Data are the bytes from From to the end of the file.
	Data []byte
	// PrevLineSHA256, when set, is the SHA-256 (hex) of the line that ends at From (the
	// manifest's hash chain): the flow's copy must end its first From bytes with it.
	PrevLineSHA256 string
}

// join returns the file as the drain left it, from the flow's pre-drain copy, or false
// when the copy does not hold the prefix the drain appended to.
func (a Appended) join(old []byte, haveOld bool, size int64) ([]byte, bool) {
	if a.From+int64(len(a.Data)) != size {
		return nil, false
	}
	if a.From == 0 {
		return a.Data, true
	}
	if !haveOld || int64(len(old)) < a.From {
		return nil, false
	}
	prefix := old[:a.From]
	if a.PrevLineSHA256 != "" {
		body := bytes.TrimSuffix(prefix, []byte("\n"))
		if len(body) == len(prefix) {
			return nil, false // the prefix does not end with a complete line
		}
		last := body[bytes.LastIndexByte(body, '\n')+1:]
		if sum := sha256.Sum256(last); hex.EncodeToString(sum[:]) != a.PrevLineSHA256 {
			return nil, false
		}
	}
	return append(bytes.Clone(prefix), a.Data...), true
}

// InputFile is an input opened for reading. *os.File implements it.
type InputFile interface {
	io.Reader
	io.ReaderAt
	Fd() uintptr
	Stat() (fs.FileInfo, error)
	Close() error
}

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
}

// Refusal is one reason not to jump.
type Refusal struct {
	Code     string `json:"code"` // no-tpm, foreign-store, unpredictable, handoff-in-initrd, kexec-disabled
	Reason   string `json:"reason"`
	Remedy   string `json:"remedy"`
	Forcible bool   `json:"forcible"`
}

// ErrRefused is wrapped by *RefusedError.
var ErrRefused = errors.New("kexec refused")

// RefusedError lists why the jump would leave a log that cannot be proven.
type RefusedError struct{ Refusals []Refusal }

func (e *RefusedError) Error() string {
	var b strings.Builder
	b.WriteString("kexec refused: the log could not be proven after the jump")
	for _, r := range e.Refusals {
		fmt.Fprintf(&b, "\n  - %s: %s (%s)", r.Code, r.Reason, r.Remedy)
	}
	return b.String()
}

func (e *RefusedError) Unwrap() error { return ErrRefused }

// WindowRecord is a record that may be measured after the last drain, as predicted.
type WindowRecord struct {
	Hook   string `json:"hook"` // KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK, KEXEC_CMDLINE, FILE_CHECK, CRITICAL_DATA
	Name   string `json:"name"`
	Digest string `json:"digest,omitempty"` // "<algo>:<hex>" of the measured content
	Note   string `json:"note,omitempty"`
}

// KexecReport is what RunKexec did or, with DryRun, would do.
type KexecReport struct {
	DryRun    bool           `json:"dry_run"`
	LoadOnly  bool           `json:"load_only"`
	Loaded    bool           `json:"loaded"`
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

const (
	maxKernelSize = 1 << 30
	maxInitrdSize = 4 << 30
)

// supportedIMAHash are the ima_hash algorithms imakexec can compute.
var supportedIMAHash = map[string]func() hash.Hash{
	"sha1": sha1.New, "sha256": sha256.New, "sha384": sha512.New384, "sha512": sha512.New,
}

// template fields whose value for the window records can be computed (spec §5).
var predictableFields = map[string]bool{
	"d": true, "n": true, "d-ng": true, "n-ng": true, "d-ngv2": true, "sig": true, "buf": true,
	"iuid": true, "igid": true, "imode": true, "evmsig": true, "d-modsig": true, "modsig": true,
}

var builtinTemplates = map[string]string{
	"ima": "d|n", "ima-ng": "d-ng|n-ng", "ima-ngv2": "d-ngv2|n-ng", "ima-sig": "d-ng|n-ng|sig",
	"ima-sigv2": "d-ngv2|n-ng|sig", "ima-buf": "d-ng|n-ng|buf", "ima-modsig": "d-ng|n-ng|sig|d-modsig|modsig",
	"evm-sig": "d-ng|n-ng|evmsig|xattrnames|xattrlengths|xattrvalues|iuid|igid|imode",
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
	if o.Trace == nil {
		o.Trace = func(string) {}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// RunKexec performs the handover in the order that leaves the kexec window empty or
// predictable (design.md, "kexec: where records get lost"):
//
//  1. inspect (refusals are decided before anything is read or changed);
//  2. read every input: open and hash the kernel (the open is itself a FILE_CHECK
//     measurement under common policies, so it must come before the drain), copy the base
//     initrd into a memfd (never opened by path), read the command line, read the store;
//  3. drain for the last time;
//  4. only write: append the handoff archive to the memfd, seal it, put its digest on the
//     command line;
//  5. kexec_file_load; unless LoadOnly: sync, reboot(LINUX_REBOOT_CMD_KEXEC).
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

	// 1. Inspect.
	o.Trace("inspect")
	st, err := steps.Inspect(ctx)
	if err != nil {
		return nil, fmt.Errorf("inspect: %w", err)
	}
	rep.Pending = st.Pending
	h := &Handoff{Format: HandoffFormat, Version: HandoffVersion, Created: o.Now().UTC().Format(time.RFC3339),
		LoadOnly: o.LoadOnly}
	h.OldKernel = OldKernel{Release: st.Release, BootID: st.BootID, Templates: st.Templates, Banks: st.Banks, IMAKexec: st.IMAKexec}
	var refusals []Refusal
	refuse := func(code, reason, remedy string, forcible bool) {
		refusals = append(refusals, Refusal{Code: code, Reason: reason, Remedy: remedy, Forcible: forcible})
	}
	if r := kexecDisabled(o.Proc); r != "" {
		refuse("kexec-disabled", r, "cold boot instead", false)
	}
	if !st.TPM {
		refuse("no-tpm", "no TPM: nothing can prove the log after the jump ("+st.TPMDetail+")",
			"check --tpm, or use --force to jump without proof", true)
	}
	if !st.StoreBound {
		refuse("foreign-store", "the store is bound to another TPM power cycle ("+st.StoreDetail+")",
			"archive the store (imakexec drain starts a new one) or use another --store", true)
	}
	algo, src := o.IMAHash, "flag"
	if algo == "" {
		algo, src = st.IMAHash, "log"
	}
	if algo == "" {
		if v := cmdlineValue(readSmall(filepath.Join(o.Proc, "cmdline")), "ima_hash"); v != "" {
			algo, src = v, "cmdline"
		}
	}
	if algo == "" {
		algo, src = "sha256", "assumed"
		rep.Warnings = append(rep.Warnings, "ima_hash not found in the log or on the command line; assuming sha256 (CONFIG_IMA_DEFAULT_HASH of common distributions)")
	}
	algo = strings.ToLower(algo)
	h.OldKernel.IMAHash, h.OldKernel.IMAHashSource = algo, src
	if supportedIMAHash[algo] == nil {
		refuse("unpredictable", fmt.Sprintf("ima_hash %q: imakexec cannot compute the initrd digest the window record holds", algo),
			"boot the old kernel with ima_hash=sha256, or use --force", true)
	}
	for _, t := range st.Templates {
		if bad := unpredictableFields(t); len(bad) > 0 {
			refuse("unpredictable", fmt.Sprintf("template %q has fields %s that imakexec cannot predict for the kexec-window records", t, strings.Join(bad, ",")),
				"use a policy with the ima-ng or ima-sig template for KEXEC_* rules, or --force", true)
		}
	}
	if len(st.Templates) == 0 {
		rep.Warnings = append(rep.Warnings, "templates in use are unknown; rejoin will try the built-in ones")
	}

	// 2. Read every input. The kernel and the initrd are hashed only in the algorithms the
	// kexec-window records can hold: ima_hash, and SHA1 for a template with the d field.
	algos := windowAlgos(algo, st.Templates)
	kern, kf, err := readKernel(o, algos)
	if err != nil {
		return rep, err
	}
	defer kf.Close()
	h.Kernel = kern
	rep.Kernel = kern
	if kern.AppendedSig && templatesUse(st.Templates, "modsig") {
		refuse("unpredictable", "the kernel image has an appended signature and a template records modsig; its exact bytes in the record are not predicted",
			"use a template without modsig for KEXEC_KERNEL_CHECK, or --force", true)
	}

	hashes := newWindowHashers(algos)
	var memfd *os.File
	if !o.DryRun {
		memfd, err = createMemfd()
		if err != nil {
			return rep, err
		}
		defer memfd.Close()
		o.Trace("memfd")
	}
	if o.Initrd != "" {
		n, resolved, segs, err := readInitrd(o, memfd, hashes, &refusals, &rep.Warnings)
		if err != nil {
			return rep, err
		}
		h.Initrd.BasePath, h.Initrd.BaseResolved, h.Initrd.BaseSize = o.Initrd, resolved, n
		h.Initrd.BaseDigests = hashes.base()
		rep.Segments = segs
	}
	base, source, err := baseCmdline(o)
	if err != nil {
		return rep, err
	}
	if strings.Contains(o.Cmdline, CmdlineParam+"=") {
		rep.Warnings = append(rep.Warnings, "removed "+CmdlineParam+"= from the given command line: imakexec sets it")
	}
	h.Cmdline = Cmdline{Base: base, Source: source, Param: CmdlineParam}
	snapshot, err := readStore(o)
	if err != nil {
		return rep, err
	}

	rep.Refusals = refusals
	rep.Predicted = predictWindow(h, "")
	rep.Cmdline = base
	rep.Handoff = h
	var blocking []Refusal
	for _, r := range refusals {
		if !r.Forcible || !o.Force {
			blocking = append(blocking, r)
		} else {
			h.Forced = append(h.Forced, r.Code+": "+r.Reason)
		}
	}
	rep.Forced = h.Forced
	if len(blocking) > 0 {
		return rep, &RefusedError{Refusals: blocking}
	}
	if o.DryRun {
		rep.Store.Files, rep.Store.Bytes = len(snapshot), storeBytes(snapshot)
		return rep, nil
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	// 3. The last drain. No input is opened after this point (except the recorded
	// fallback below).
	o.Trace("drain")
	dr, err := steps.Drain(ctx)
	if err != nil {
		return rep, fmt.Errorf("drain: %w", err)
	}
	o.Trace("archive")
	h.Drain = DrainInfo{Records: dr.Records, KernelCarries: dr.KernelCarries, Backend: dr.Backend}
	rep.Drained = &h.Drain
	files, reads, err := storeAfterDrain(o, snapshot, dr, algo)
	if err != nil {
		return rep, err
	}
	h.PostDrainReads = reads
	if o.StoreOnDisk {
		h.DiskStore = &StoreInfo{Dir: o.Store}
		for _, f := range files {
			h.DiskStore.Files = append(h.DiskStore.Files, StoreFile{Name: f.Name, Size: f.Size, SHA256: f.SHA256})
		}
		files = nil
	}
	rep.Store.Files, rep.Store.Bytes = len(files), storeBytes(files)

	// 4. Only writes: the handoff archive, after the base initrd in the memfd.
	h.Initrd.MemfdName = MemfdName
	h.Initrd.ResolvedPath, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", memfd.Fd()))
	h.Initrd.Sealed = true
	h.Initrd.Padding = PadLen(h.Initrd.BaseSize)
	h.Initrd.ArchiveStart = h.Initrd.BaseSize + h.Initrd.Padding
	arch, err := HandoffArchive(h, files)
	if err != nil {
		return rep, fmt.Errorf("build handoff archive: %w", err)
	}
	o.Trace("write-handoff")
	if _, err := AppendArchive(io.MultiWriter(memfd, hashes), h.Initrd.BaseSize, arch); err != nil {
		return rep, fmt.Errorf("write handoff to memfd: %w", err)
	}
	total := h.Initrd.ArchiveStart + int64(len(arch))
	if err := sealMemfd(memfd); err != nil {
		return rep, err
	}
	// Read back our own archive from the memfd (an fd, not a path: no measurement).
	if _, err := ReadImageHandoff(io.NewSectionReader(memfd, h.Initrd.ArchiveStart, int64(len(arch))), int64(len(arch)), o.Limits); err != nil {
		return rep, fmt.Errorf("read back handoff archive: %w", err)
	}
	param := hashes.param()
	cmdline := strings.TrimSpace(base + " " + CmdlineParam + "=" + param)
	rep.Cmdline, rep.InitrdLen = cmdline, total
	rep.Initrd = h.Initrd
	rep.Predicted = predictWindow(h, param)

	// 5. Load, then jump.
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	o.Trace("load")
	if err := kx.FileLoad(int(kf.Fd()), int(memfd.Fd()), cmdline); err != nil {
		return rep, err
	}
	o.Trace("loaded")
	rep.Loaded = true
	if o.LoadOnly {
		rep.Warnings = append(rep.Warnings, "loaded only: records measured between now and the jump are carried only by a 6.16+ kernel with CONFIG_IMA_KEXEC; jump soon (systemctl kexec)")
		return rep, nil
	}
	o.Trace("sync")
	kx.Sync()
	o.Trace("reboot")
	if err := kx.Reboot(); err != nil {
		return rep, err
	}
	return rep, nil
}

func storeBytes(files []StoreFile) int64 {
	var n int64
	for _, f := range files {
		n += int64(len(f.Data))
	}
	return n
}

func unpredictableFields(template string) []string {
	format := template
	if f, ok := builtinTemplates[template]; ok {
		format = f
	} else if !strings.Contains(template, "|") && !predictableFields[template] {
		return []string{"(unknown template " + template + ")"}
	}
	var bad []string
	for _, f := range strings.Split(format, "|") {
		if !predictableFields[f] {
			bad = append(bad, f)
		}
	}
	return bad
}

func templatesUse(templates []string, field string) bool {
	for _, t := range templates {
		format := t
		if f, ok := builtinTemplates[t]; ok {
			format = f
		}
		for _, f := range strings.Split(format, "|") {
			if f == field {
				return true
			}
		}
	}
	return false
}

// copyBufSize is the read size for the kernel and the initrd: few system calls, and the
// hashes see large blocks.
const copyBufSize = 1 << 20

// windowAlgos returns the algorithms the kernel image and the initrd are hashed in: the
// ima_hash algorithm (the digest of d-ng and of the window records, spec §5), plus sha1
// when a template in use has the d field (the "ima" template; the kernel hashes again with
// SHA1 for it), and sha256 when ima_hash is not one imakexec computes (the run is refused
// unless forced; the digest is then informative only). A digest in any other algorithm is
// in no record and only costs time: hashing the kernel in all four was most of imakexec
// kexec's time under QEMU TCG.
func windowAlgos(algo string, templates []string) []string {
	var out []string
	add := func(name string) {
		if supportedIMAHash[name] != nil && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	add(algo)
	if templatesUse(templates, "d") {
		add("sha1")
	}
	if len(out) == 0 {
		add("sha256")
	}
	return out
}

// readKernel opens the kernel image (kept open for kexec_file_load) and hashes it in algos,
// in one pass over the file.
func readKernel(o KexecOptions, algos []string) (KernelImage, InputFile, error) {
	o.Trace("open-kernel")
	f, err := o.Open(o.Kernel)
	if err != nil {
		return KernelImage{}, nil, fmt.Errorf("open kernel: %w", err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("kernel %s is not a regular file", o.Kernel)
	}
	if fi.Size() > maxKernelSize {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("kernel %s is %d bytes (limit %d)", o.Kernel, fi.Size(), maxKernelSize)
	}
	hs := make([]hash.Hash, len(algos))
	ws := make([]io.Writer, 0, len(algos)+1)
	for i, name := range algos {
		hs[i] = supportedIMAHash[name]()
		ws = append(ws, hs[i])
	}
	tail := &tailWriter{max: len(modsigMagic)}
	ws = append(ws, tail)
	// io.LimitReader hides (*os.File).WriteTo, which would ignore the buffer.
	n, err := io.CopyBuffer(io.MultiWriter(ws...), io.LimitReader(f, maxKernelSize+1), make([]byte, copyBufSize))
	if err != nil {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("read kernel: %w", err)
	}
	if n > maxKernelSize {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("kernel %s is larger than %d bytes", o.Kernel, maxKernelSize)
	}
	k := KernelImage{Path: o.Kernel, Size: n, Digests: make(map[string]string, len(algos)), Mode: uint32(fi.Mode().Perm())}
	for i, name := range algos {
		k.Digests[name] = hex.EncodeToString(hs[i].Sum(nil))
	}
	fd := int(f.Fd())
	k.ResolvedPath, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if k.ResolvedPath == "" {
		k.ResolvedPath, _ = filepath.Abs(o.Kernel)
	}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.UID, k.GID, k.Mode = s.Uid, s.Gid, s.Mode
	}
	k.IMAXattr = fdXattr(fd, "security.ima")
	k.EVMXattr = fdXattr(fd, "security.evm")
	k.AppendedSig = hasModsig(tail.b)
	return k, f, nil
}

type tailWriter struct {
	b   []byte
	max int
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// windowHashers hash the memfd content as it is written, in the window algorithms
// (windowAlgos).
type windowHashers struct {
	names []string
	hs    []hash.Hash
	w     io.Writer
}

func newWindowHashers(algos []string) *windowHashers {
	w := &windowHashers{names: algos}
	ws := make([]io.Writer, len(algos))
	for i, name := range algos {
		h := supportedIMAHash[name]()
		w.hs = append(w.hs, h)
		ws[i] = h
	}
	w.w = io.MultiWriter(ws...)
	return w
}

func (w *windowHashers) Write(p []byte) (int, error) { return w.w.Write(p) }

// base returns the digests so far (of the base initrd, before the archive).
func (w *windowHashers) base() map[string]string {
	m := map[string]string{}
	for i, h := range w.hs {
		m[w.names[i]] = hex.EncodeToString(h.Sum(nil))
	}
	return m
}

// param returns "<algo>:<hex>[,<algo>:<hex>]" of everything written.
func (w *windowHashers) param() string {
	var parts []string
	for i, h := range w.hs {
		parts = append(parts, w.names[i]+":"+hex.EncodeToString(h.Sum(nil)))
	}
	return strings.Join(parts, ",")
}

func createMemfd() (*os.File, error) {
	fd, err := unix.MemfdCreate(MemfdName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	return os.NewFile(uintptr(fd), "memfd:"+MemfdName), nil
}

func sealMemfd(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
	if err != nil {
		return fmt.Errorf("seal memfd: %w", err)
	}
	return nil
}

// readInitrd copies the base initrd into the memfd (or only hashes it in a dry run) in one
// pass that also hashes it, and checks that it carries no handoff already.
//
// The check reads the copy in the memfd (what is loaded), not the file again: headers
// only for plain newc segments (Walk skips file data by offset), the decompressed stream
// for gzip and zstd segments, whose names cannot be known otherwise.
func readInitrd(o KexecOptions, memfd *os.File, hashes *windowHashers, refusals *[]Refusal, warnings *[]string) (int64, string, []string, error) {
	o.Trace("open-initrd")
	f, err := o.Open(o.Initrd)
	if err != nil {
		return 0, "", nil, fmt.Errorf("open initrd: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0, "", nil, fmt.Errorf("initrd %s is not a regular file", o.Initrd)
	}
	if fi.Size() > maxInitrdSize {
		return 0, "", nil, fmt.Errorf("initrd %s is %d bytes (limit %d)", o.Initrd, fi.Size(), int64(maxInitrdSize))
	}
	resolved, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	dst := io.Writer(hashes)
	if memfd != nil {
		dst = io.MultiWriter(memfd, hashes)
	}
	n, err := io.CopyBuffer(dst, io.LimitReader(f, maxInitrdSize+1), make([]byte, copyBufSize))
	if err != nil {
		return 0, "", nil, fmt.Errorf("read initrd: %w", err)
	}
	if n > maxInitrdSize {
		return 0, "", nil, fmt.Errorf("initrd %s is larger than %d bytes", o.Initrd, int64(maxInitrdSize))
	}
	o.Trace("check-initrd")
	var ra io.ReaderAt = f
	if memfd != nil {
		ra = memfd
	}
	var segs []string
	found := ""
	walked, werr := Walk(ra, n, o.Limits, func(e *Entry, _ io.Reader) error {
		name := path.Clean(strings.TrimPrefix(e.Name, "/"))
		if found == "" && (name == HandoffDir || strings.HasPrefix(name, HandoffDir+"/")) {
			found = e.Name
		}
		return nil
	})
	for _, s := range walked {
		c := s.Compression
		if c == "" {
			c = "plain"
		}
		segs = append(segs, c)
	}
	switch {
	case found != "":
		*refusals = append(*refusals, Refusal{Code: "handoff-in-initrd",
			Reason: fmt.Sprintf("the initrd %s already holds %q (a handoff from an earlier kexec?); it would mix with this one when the kernel unpacks", o.Initrd, found),
			Remedy: "pass the distribution's initrd, not one imakexec produced", Forcible: false})
	case errors.Is(werr, ErrUnsupportedCompression):
		*warnings = append(*warnings, fmt.Sprintf("initrd %s not fully checked for an earlier handoff: %v", o.Initrd, werr))
	case werr != nil:
		*refusals = append(*refusals, Refusal{Code: "initrd-unreadable",
			Reason: fmt.Sprintf("initrd %s: %v", o.Initrd, werr),
			Remedy: "check the initrd; --force loads it anyway (the kernel may be more lenient)", Forcible: true})
	}
	return n, resolved, segs, nil
}

func readSmall(name string) string {
	b, err := readRegularOrProc(name, 64<<10)
	if err != nil {
		return ""
	}
	return string(b)
}

func readRegularOrProc(name string, max int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

// cmdlineValue returns the value of key=value on a kernel command line.
func cmdlineValue(cmdline, key string) string {
	for _, f := range splitCmdline(cmdline) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

// splitCmdline splits a command line at spaces outside double quotes, as the kernel's
// next_arg does.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inq := false
	for _, r := range s {
		switch {
		case r == '"':
			inq = !inq
			cur.WriteRune(r)
		case (r == ' ' || r == '\t' || r == '\n') && !inq:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// baseCmdline returns the command line without any imakexec.initrd= parameter.
func baseCmdline(o KexecOptions) (string, string, error) {
	src, cl := "empty", ""
	switch {
	case o.ReuseCmdline:
		o.Trace("read-cmdline")
		f, err := o.Open(filepath.Join(o.Proc, "cmdline"))
		if err != nil {
			return "", "", fmt.Errorf("read running command line: %w", err)
		}
		b, err := io.ReadAll(io.LimitReader(f, 64<<10))
		f.Close()
		if err != nil {
			return "", "", fmt.Errorf("read running command line: %w", err)
		}
		src, cl = "reuse", string(b)
	case o.Cmdline != "":
		src, cl = "append", o.Cmdline
	}
	var keep []string
	for _, f := range splitCmdline(cl) {
		if !strings.HasPrefix(f, CmdlineParam+"=") {
			keep = append(keep, f)
		}
	}
	return strings.Join(keep, " "), src, nil
}

// readStore reads the store's regular files before the drain (archived chains below
// archive/ are never joined and are not carried).
func readStore(o KexecOptions) ([]StoreFile, error) {
	o.Trace("read-store")
	names, err := ListStore(o.Store)
	if err != nil {
		return nil, fmt.Errorf("read store: %w", err)
	}
	var out []StoreFile
	var total int64
	for _, n := range names {
		data, err := readInput(o, filepath.Join(o.Store, filepath.FromSlash(n)), defaultMaxStore-total)
		if err != nil {
			return nil, fmt.Errorf("read store: %w", err)
		}
		total += int64(len(data))
		out = append(out, NewStoreFile(n, data))
	}
	return out, nil
}

// ListStore lists the files of a store directory that a handoff carries: regular files,
// relative names with '/', without the lock, temporary files and archive/. Listing reads
// directories only (no file is opened). A missing directory is an empty store.
func ListStore(dir string) ([]string, error) {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "archive" || isTempName(d.Name()) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || isTempName(d.Name()) || checkStoreName(rel) != nil {
			return nil
		}
		names = append(names, rel)
		return nil
	})
	return names, err
}

// isTempName skips the store's lock and temporary files.
func isTempName(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".tmp") || name == "lock"
}

func readInput(o KexecOptions, name string, max int64) ([]byte, error) {
	f, err := o.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: more than %d bytes", name, max)
	}
	return b, nil
}

// storeAfterDrain merges the drain's listing with the pre-drain copy. Files neither carried
// by the drain nor matching the copy are read now and recorded as post-drain reads.
func storeAfterDrain(o KexecOptions, snapshot []StoreFile, dr *Drained, algo string) ([]StoreFile, []FileRead, error) {
	if dr.Store == nil {
		return snapshot, nil, nil
	}
	old := map[string]StoreFile{}
	for _, f := range snapshot {
		old[f.Name] = f
	}
	var out []StoreFile
	var reads []FileRead
	var total int64
	for _, f := range dr.Store {
		if err := checkStoreName(f.Name); err != nil {
			return nil, nil, fmt.Errorf("drain result: %w", err)
		}
		s, ok := old[f.Name]
		a, appended := dr.Appended[f.Name]
		var joined []byte
		if appended {
			joined, appended = a.join(s.Data, ok, f.Size)
		}
		switch {
		case f.Data != nil:
			out = append(out, NewStoreFile(f.Name, f.Data))
		case appended:
			out = append(out, NewStoreFile(f.Name, joined))
		case ok && s.Size == f.Size && (f.SHA256 == "" || f.SHA256 == s.SHA256):
			out = append(out, s)
		default:
			name := filepath.Join(o.Store, filepath.FromSlash(f.Name))
			o.Trace("post-drain-read")
			data, err := readInput(o, name, defaultMaxStore-total)
			if err != nil {
				return nil, nil, fmt.Errorf("read store file after drain: %w", err)
			}
			h := supportedIMAHash[algo]
			if h == nil {
				h = sha256.New
			}
			hh := h()
			hh.Write(data)
			abs, _ := filepath.Abs(name)
			reads = append(reads, FileRead{Path: abs, Size: int64(len(data)), Digest: algo + ":" + hex.EncodeToString(hh.Sum(nil))})
			out = append(out, NewStoreFile(f.Name, data))
		}
		total += out[len(out)-1].Size
		if total > defaultMaxStore {
			return nil, nil, fmt.Errorf("store exceeds %d bytes", defaultMaxStore)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, reads, nil
}

// predictWindow lists the records kexec_file_load may add under a policy with KEXEC_*
// rules (spec §11; design.md), for the plan and for rejoin's reconstruction.
func predictWindow(h *Handoff, param string) []WindowRecord {
	algo := h.OldKernel.IMAHash
	out := []WindowRecord{{
		Hook: "KEXEC_KERNEL_CHECK", Name: h.Kernel.ResolvedPath, Digest: algo + ":" + h.Kernel.Digests[algo],
		Note: "absent when the open before the drain was measured (IMA's per-file cache)",
	}}
	init := WindowRecord{Hook: "KEXEC_INITRAMFS_CHECK", Name: "memfd:" + MemfdName,
		Note: "digest is on the next kernel's command line (" + CmdlineParam + "=)"}
	if param != "" {
		init.Digest = strings.Split(param, ",")[0]
	}
	out = append(out, init)
	cl := WindowRecord{Hook: "KEXEC_CMDLINE", Name: "kexec-cmdline", Note: "ima-buf of the command line, equal to the next kernel's /proc/cmdline"}
	out = append(out, cl)
	for _, r := range h.PostDrainReads {
		out = append(out, WindowRecord{Hook: "FILE_CHECK", Name: r.Path, Digest: r.Digest, Note: "store file read after the drain"})
	}
	out = append(out, WindowRecord{Hook: "CRITICAL_DATA", Name: "kexec_load", Note: "6.16+ with a critical_data rule; sizes of the list at load"})
	return out
}
