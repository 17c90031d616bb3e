package handover

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/serialize"
)

// KexecSteps is the handover side of `imakexec kexec`: it implements initramfs.Steps.
// Inspect reads the kernel's own log, policy and configuration to fill the kexec plan
// (the templates and ima_hash the kexec-window records will have, whether the kernel
// carries its list, whether the policy measures the kexec functions); Drain is the last
// drain. The TPM opened by Inspect is kept for the drain; Close closes it.
type KexecSteps struct {
	Paths    Paths
	StoreDir string
	TPM      string // OpenTPM's argument
	// BootDir holds config-<release> (default /boot), read for CONFIG_IMA_KEXEC when
	// /proc/config.gz is absent.
	BootDir string

	t      transport.TPMCloser
	tpmErr error
}

// NewKexecSteps returns the steps for the store dir, the kernel at paths and the TPM tpm.
func NewKexecSteps(paths Paths, storeDir, tpm string) *KexecSteps {
	return &KexecSteps{Paths: paths, StoreDir: storeDir, TPM: tpm}
}

// Close closes the TPM.
func (s *KexecSteps) Close() error {
	if s.t != nil {
		return s.t.Close()
	}
	return nil
}

// Inspect implements initramfs.Steps. Nothing it reads is trusted for a verdict: the plan
// only decides what rejoin will try, and rejoin keeps a reconstruction only when the TPM
// proves it.
func (s *KexecSteps) Inspect(ctx context.Context) (*initramfs.State, error) {
	s.t, s.tpmErr = OpenTPM(s.TPM)
	var t transport.TPM
	if s.t != nil {
		t = s.t
	}
	st := GetStatus(s.Paths, s.StoreDir, t, s.TPM, s.tpmErr)
	out := &initramfs.State{
		TPM: s.t != nil && st.TPMErr == "", TPMDetail: st.TPM, StoreBound: true, Pending: int(st.Count),
		Backend: string(st.Backend), Banks: st.TPMBanks, Release: st.Release, BootID: st.BootID,
	}
	if st.TPMErr != "" {
		out.TPMDetail = st.TPMErr
	}
	if m := st.Store.BindingMatch; m != nil && !*m {
		out.StoreBound = false
		out.StoreDetail = st.Store.BindingNote
	}
	ki, err := ReadKernelInfo(s.Paths)
	if err != nil {
		return out, nil
	}
	prof, perr := readLogProfile(ctx, s.Paths, s.StoreDir, ki.BootID)
	if perr == nil {
		out.Templates = prof.templates
		out.IMAHash, out.IMAHashFrom = prof.imaHash(st.TPMBanks)
	} else {
		out.Notes = append(out.Notes, "the kernel's log could not be read for the templates and ima_hash: "+perr.Error())
	}
	pol, polErr := readPolicy(s.Paths)
	if polErr == nil {
		out.MeasuresKexec = pol.measuresKexec()
		for _, t := range pol.kexecTemplates {
			if !slices.Contains(out.Templates, t) {
				out.Templates = append(out.Templates, t)
			}
		}
	}
	out.IMAKexec, out.IMAKexecFrom = imaKexec(s.Paths, s.bootDir(), ki.Release, prof)
	return out, nil
}

func (s *KexecSteps) bootDir() string {
	if s.BootDir == "" {
		return "/boot"
	}
	return s.BootDir
}

// keepWritten bounds the bytes the last drain hands over (DrainOptions.KeepWritten). The
// last drain before a kexec moves only what was measured since the previous drain; a
// larger one leaves its files to be read again, and those reads recorded.
const keepWritten = 64 << 20

// Drain implements initramfs.Steps: the last drain, and the store as it left it.
func (s *KexecSteps) Drain(ctx context.Context) (*initramfs.Drained, error) {
	if s.t == nil {
		return nil, fmt.Errorf("drain needs a TPM: %w", s.tpmErr)
	}
	res, err := Drain(ctx, DrainOptions{Paths: s.Paths, StoreDir: s.StoreDir, TPM: s.t, KeepWritten: keepWritten})
	if err != nil {
		return nil, err
	}
	d := &initramfs.Drained{Records: int(res.Stored), Backend: string(res.Backend)}
	if res.Suspended {
		d.KernelCarries = int(res.Held - res.Retained)
	}
	// The store is listed from the directory (a directory read is not measured). The drain
	// hands over what it wrote: new segments whole, the lines it appended to the manifest;
	// the flow takes every other file from its copy read before the drain. A file it
	// cannot match (the bytes were not kept) is read again and recorded as a post-drain
	// read.
	whole := map[string][]byte{}
	written := map[string]Segment{}
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
	names, err := initramfs.ListStore(s.StoreDir)
	if err != nil {
		return nil, fmt.Errorf("list store after drain: %w", err)
	}
	d.Store = []initramfs.StoreFile{}
	for _, n := range names {
		fi, err := os.Lstat(filepath.Join(s.StoreDir, filepath.FromSlash(n)))
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

// logProfile is what the running kernel's own records say about it: the records since
// its boot_aggregate (the records before it in its list were restored from the previous
// kernel, which may have had another configuration).
type logProfile struct {
	templates []string // template names (a custom format's name is its format) in first-seen order
	// bufAlgos counts the d-ng prefixes of buffer records (a template with the buf field)
	// and violations: both are hashed in ima_hash_algo whatever the file
	// (process_buffer_measurement; ima_eventdigest_ng_init for a violation, 7.2).
	bufAlgos map[string]int
	// fileAlgos counts the prefixes of file records: ima_hash_algo unless the file's
	// security.ima names another algorithm (ima_get_hash_algo).
	fileAlgos map[string]int
	// bootAggAlgo is the boot_aggregate's prefix: ima_hash_algo when the TPM has that
	// bank, else SHA256, else SHA1 (ima_calc_boot_aggregate, 7.2).
	bootAggAlgo string
	bootAgg     bool // this kernel's boot_aggregate was seen
	// kexecEvents: a kexec_load or kexec_execute critical-data record of this kernel
	// (ima_measure_kexec_event, built only with CONFIG_IMA_KEXEC, 6.16+).
	kexecEvents bool
}

func newLogProfile() *logProfile {
	return &logProfile{bufAlgos: map[string]int{}, fileAlgos: map[string]int{}}
}

// see adds one record; a boot_aggregate starts the profile anew.
func (p *logProfile) see(rec *serialize.Record) {
	if serialize.IsBootAggregate(rec, storeOrder) {
		*p = *newLogProfile()
		p.bootAgg = true
	}
	if !slices.Contains(p.templates, rec.Template) {
		p.templates = append(p.templates, rec.Template)
	}
	if rec.Template == serialize.TemplateIMA {
		return // the d field has no algorithm prefix
	}
	fields, err := serialize.ParseFields(rec, storeOrder)
	if err != nil {
		return
	}
	var prefix string
	hasBuf, name := false, ""
	for _, f := range fields {
		switch f.ID {
		case serialize.FieldDNG, serialize.FieldDNGv2:
			if prefix == "" {
				if pr, _, err := serialize.ParseDigestField(f.Data); err == nil {
					// d-ngv2 prefixes the digest type: "ima:sha256", "verity:sha256".
					_, prefix, _ = strings.Cut(pr, ":")
					if !strings.Contains(pr, ":") {
						prefix = pr
					}
				}
			}
		case serialize.FieldBuf:
			hasBuf = true
		case serialize.FieldNNG, serialize.FieldN:
			name = string(bytes.TrimRight(f.Data, "\x00"))
		}
	}
	if hasBuf && (name == "kexec_load" || name == "kexec_execute") {
		p.kexecEvents = true
	}
	switch {
	case prefix == "":
	case serialize.IsBootAggregate(rec, storeOrder):
		p.bootAggAlgo = prefix
	case hasBuf || rec.IsViolation():
		p.bufAlgos[prefix]++
	default:
		p.fileAlgos[prefix]++
	}
}

// imaHash returns ima_hash as the records show it, and which records showed it; "" when
// they do not tell. tpmBanks are the TPM's banks (for the boot_aggregate rule).
func (p *logProfile) imaHash(tpmBanks []string) (string, string) {
	if a := mostCommon(p.bufAlgos); a != "" {
		return a, "log: buffer and violation records"
	}
	if a := mostCommon(p.fileAlgos); a != "" {
		if len(p.fileAlgos) > 1 {
			return a, "log: most file records (others name the algorithm of their security.ima)"
		}
		return a, "log: file records"
	}
	// The boot_aggregate is in ima_hash when the TPM has that bank; SHA256 and SHA1 are
	// also what it falls back to, so they tell ima_hash only when the TPM has every bank
	// ima_hash could be.
	switch a := p.bootAggAlgo; {
	case a == "":
	case a != "sha256" && a != "sha1":
		return a, "log: boot_aggregate"
	case hasAll(tpmBanks, "sha1", "sha256", "sha384", "sha512"):
		return a, "log: boot_aggregate (the TPM has every bank)"
	}
	return "", ""
}

func mostCommon(m map[string]int) string {
	best, n := "", 0
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > n {
			best, n = k, m[k]
		}
	}
	return best
}

func hasAll(have []string, want ...string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// readLogProfile reads the running kernel's records: its live list (staged, then current)
// and, when the kernel no longer holds its boot_aggregate (a 7.2 drain deleted it), this
// boot's segments of the store before them.
func readLogProfile(ctx context.Context, p Paths, storeDir, bootID string) (*logProfile, error) {
	k, err := ProbeKernel(p)
	if err != nil {
		return nil, err
	}
	live := newLogProfile()
	if err := scanLive(ctx, k, live.see); err != nil {
		return nil, err
	}
	if live.bootAgg {
		return live, nil
	}
	prof := newLogProfile()
	if err := scanStoreBoot(storeDir, bootID, prof.see); err != nil {
		return nil, err
	}
	// The live records follow the stored ones (the overlap, records the kernel still
	// holds after storing them, only counts twice).
	if err := scanLive(ctx, k, prof.see); err != nil {
		return nil, err
	}
	return prof, nil
}

// scanLive streams the running kernel's held records, the staged list (7.2) then the
// current list, SHA1 form, to see (liveSource, the one live-list reader).
func scanLive(ctx context.Context, k *Kernel, see func(*serialize.Record)) error {
	src := &liveSource{ctx: ctx, k: k}
	defer src.Close()
	return eachRecord(src, see)
}

// eachRecord hands every record of src to see, up to io.EOF.
func eachRecord(src serialize.Source, see func(*serialize.Record)) error {
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		see(rec)
	}
}

// scanStoreBoot streams the chain segments of one boot from the store (a missing store
// has none).
func scanStoreBoot(dir, bootID string, see func(*serialize.Record)) error {
	s, err := OpenStore(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, sg := range s.ChainSegments() {
		if sg.Boot.BootID != bootID {
			continue
		}
		cr := &ChainReader{s: s, segs: []Segment{sg}, i: -1, all: true, single: true}
		err := eachRecord(cr, see)
		cr.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// kexecFuncs are the policy functions whose measurements kexec_file_load causes
// (ima_post_load_data / process_measurement for the image and initramfs,
// process_buffer_measurement for the command line; ima_kexec_cmdline, 7.2).
var kexecFuncs = []string{"KEXEC_KERNEL_CHECK", "KEXEC_INITRAMFS_CHECK", "KEXEC_CMDLINE"}

// policy is what the IMA policy file says about the kexec functions.
type policy struct {
	kexecMeasure   bool     // a measure rule names a kexec function
	funclessRule   bool     // a measure rule has no func=: it may match the kexec functions
	kexecTemplates []string // template= of the measure rules for kexec functions
}

// maxPolicy bounds the policy file read (the kernel's policy is a few KiB).
const maxPolicy = 1 << 20

// readPolicy reads securityfs ima/policy (readable by root with CONFIG_IMA_READ_POLICY;
// the kernel prints one rule per line in the syntax it accepts, ima_policy_show).
func readPolicy(p Paths) (*policy, error) {
	dir, err := p.IMADir()
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(dir, "policy"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parsePolicy(io.LimitReader(f, maxPolicy))
}

func parsePolicy(r io.Reader) (*policy, error) {
	pol := &policy{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for sc.Scan() {
		words := strings.Fields(sc.Text())
		if len(words) == 0 || words[0] != "measure" {
			continue
		}
		fn, tmpl := "", ""
		for _, w := range words[1:] {
			if v, ok := strings.CutPrefix(w, "func="); ok {
				fn = v
			}
			if v, ok := strings.CutPrefix(w, "template="); ok {
				tmpl = v
			}
		}
		switch {
		case fn == "":
			pol.funclessRule = true
		case slices.Contains(kexecFuncs, fn):
			pol.kexecMeasure = true
			if tmpl != "" && !slices.Contains(pol.kexecTemplates, tmpl) {
				pol.kexecTemplates = append(pol.kexecTemplates, tmpl)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read IMA policy: %w", err)
	}
	sort.Strings(pol.kexecTemplates)
	return pol, nil
}

// measuresKexec is true when a measure rule names a kexec function, false when every
// measure rule names another function, nil when a rule without func= may match them.
func (p *policy) measuresKexec() *bool {
	v := p.kexecMeasure
	if !v && p.funclessRule {
		return nil
	}
	return &v
}

// imaKexec says whether the running kernel carries its measurement list across kexec
// (CONFIG_IMA_KEXEC), and how that is known:
//
//   - the kernel configuration, /proc/config.gz (CONFIG_IKCONFIG_PROC) or
//     config-<release> in bootDir, is authoritative either way;
//   - otherwise a kexec_load or kexec_execute critical-data record of this kernel shows
//     "yes" (ima_measure_kexec_event exists only with CONFIG_IMA_KEXEC, 6.16+);
//   - otherwise it is unknown (""). A restored list at the head of this kernel's log
//     says nothing: the restore (ima_load_kexec_buffer) is built with HAVE_IMA_KEXEC
//     alone, and it shows what the previous kernel did, not this one.
func imaKexec(p Paths, bootDir, release string, prof *logProfile) (string, string) {
	p = p.withDefaults()
	if v := configIMAKexec(filepath.Join(p.Proc, "config.gz"), true); v != "" {
		return v, "kernel config (" + filepath.Join(p.Proc, "config.gz") + ")"
	}
	if release != "" {
		name := filepath.Join(bootDir, "config-"+release)
		if v := configIMAKexec(name, false); v != "" {
			return v, "kernel config (" + name + ")"
		}
	}
	if prof != nil && prof.kexecEvents {
		return "yes", "log: kexec_load/kexec_execute records"
	}
	return "", ""
}

// maxConfig bounds a kernel configuration read (a distribution config is about 300 KiB).
const maxConfig = 8 << 20

// configIMAKexec returns "yes" or "no" from a kernel configuration, "" when it cannot be
// read or does not mention CONFIG_IMA_KEXEC (a kernel without IMA: nothing to carry).
func configIMAKexec(name string, gz bool) string {
	f, err := os.Open(name)
	if err != nil {
		return ""
	}
	defer f.Close()
	var r io.Reader = f
	if gz {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return ""
		}
		defer zr.Close()
		r = zr
	}
	sc := bufio.NewScanner(io.LimitReader(r, maxConfig))
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "CONFIG_IMA_KEXEC=y":
			return "yes"
		case "# CONFIG_IMA_KEXEC is not set":
			return "no"
		}
	}
	return ""
}
