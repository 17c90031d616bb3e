package handover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// WindowInputs is what the old kernel's handoff says about the kexec window: the inputs of
// kexec_file_load and the files read after the last drain, whose measurements
// (FILE_CHECK, KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK, KEXEC_CMDLINE) came after the
// last drain and may be in no list (a kernel before 6.16 copies its list at
// kexec_file_load, ima_add_kexec_buffer; Debian's 6.1 carries none). Rejoin
// rebuilds them as candidates; only a candidate the TPM proves is kept.
type WindowInputs struct {
	// IMAHash is the old kernel's ima_hash algorithm ("sha256" when unknown).
	IMAHash string
	// Templates are the templates the old list used: candidates for file records.
	Templates []string
	// PCR is the PCR IMA extends (CONFIG_IMA_MEASURE_PCR_IDX, 10 by default).
	PCR uint32
	// Files in the order the kernel measured them: reads after the drain, the kernel
	// image, the initrd.
	Files []WindowFile
	// Cmdline is the command line given to kexec_file_load (the kexec-cmdline buffer),
	// nil when unknown.
	Cmdline *string
}

// WindowFile is one file the old kernel may have measured in the window.
type WindowFile struct {
	What     string            // "read", "kernel", "initrd"
	Names    []string          // event-name candidates (the path IMA records)
	Digests  map[string][]byte // kernel hash name -> digest of the file's bytes
	IMAXattr []byte
	UID, GID uint32
	Mode     uint16
	// Algo is the algorithm the kernel measured this file in when its security.ima names
	// one (ima_get_hash_algo); "" for IMAHash.
	Algo string
}

// maxCandidates bounds the joins tried.
const maxCandidates = 4096

// candidate is one guess at the kexec-window records that no list holds.
type candidate struct {
	recs []serialize.Record
	desc []string
}

// windowCandidates enumerates the reconstructions: every item present or absent, each
// present item with every template (and name) the old kernel may have used, in the order
// the kernel measures them. Fewer reconstructed records come first.
func windowCandidates(w *WindowInputs, order serialize.ByteOrder) ([]candidate, error) {
	out := []candidate{{}}
	if w == nil {
		return out, nil
	}
	algo := w.IMAHash
	if algo == "" {
		algo = "sha256"
	}
	pcr := w.PCR
	if pcr == 0 {
		pcr = 10
	}
	fileTemplates := []string{}
	for _, t := range w.Templates {
		if t != "ima-buf" && !slices.Contains(fileTemplates, t) {
			fileTemplates = append(fileTemplates, t)
		}
	}
	if len(fileTemplates) == 0 {
		fileTemplates = []string{"ima-ng", "ima-sig"}
	}
	// options[i] are the records item i may have produced.
	type option struct {
		rec  serialize.Record
		desc string
	}
	var items [][]option
	for _, f := range w.Files {
		var opts []option
		fa := algo
		if f.Algo != "" {
			fa = f.Algo
		}
		d := f.Digests[fa]
		if len(d) == 0 {
			continue
		}
		for _, t := range fileTemplates {
			for _, name := range f.Names {
				rec, err := serialize.BuildRecord(t, serialize.Measured{PCR: pcr, Algo: fa, Digest: d, SHA1: f.Digests["sha1"],
					Name: name, IMAXattr: f.IMAXattr, UID: f.UID, GID: f.GID, Mode: f.Mode}, order)
				if err != nil {
					continue
				}
				opts = append(opts, option{rec, fmt.Sprintf("%s %q (%s)", f.What, name, t)})
			}
		}
		if len(opts) > 0 {
			items = append(items, opts)
		}
	}
	if w.Cmdline != nil {
		var opts []option
		sum, err := hashBytes(algo, []byte(*w.Cmdline))
		if err == nil {
			ts := []string{"ima-buf"}
			for _, t := range w.Templates {
				if !slices.Contains(ts, t) {
					ts = append(ts, t)
				}
			}
			for _, t := range ts {
				rec, err := serialize.BuildRecord(t, serialize.Measured{PCR: pcr, Algo: algo, Digest: sum, Name: "kexec-cmdline", Buf: []byte(*w.Cmdline), IsBuffer: true}, order)
				if err != nil {
					continue
				}
				opts = append(opts, option{rec, fmt.Sprintf("kexec-cmdline (%s)", t)})
			}
		}
		if len(opts) > 0 {
			items = append(items, opts)
		}
	}
	var rec func(i int, cur candidate)
	out = out[:0]
	rec = func(i int, cur candidate) {
		if len(out) >= maxCandidates {
			return
		}
		if i == len(items) {
			out = append(out, cur)
			return
		}
		rec(i+1, cur)
		for _, o := range items[i] {
			next := candidate{recs: append(append([]serialize.Record{}, cur.recs...), o.rec), desc: append(append([]string{}, cur.desc...), o.desc)}
			rec(i+1, next)
		}
	}
	rec(0, candidate{})
	sort.SliceStable(out, func(a, b int) bool { return len(out[a].recs) < len(out[b].recs) })
	return out, nil
}

// joinPlan is how a new kernel's list joins the chain.
type joinPlan struct {
	prev          *BootState // the store's last kernel; nil for a new chain
	carried       uint64     // records at the head of the live list the old kernel carried
	dup           uint64     // of those, records the chain holds already
	dupRef        DupRef
	windowCarried []serialize.Record // live[dup:carried]: measured after the last drain, carried
	reconstructed candidate          // rebuilt window records the TPM proved
	candidates    int
	bootAggSeq    uint64
	chainLen      uint64 // records in the store's chain
	verified      *serialize.Verified
	extra         int // live records after the matching prefix
}

func (p *joinPlan) describe() string {
	var parts []string
	switch {
	case p.prev == nil:
		parts = append(parts, "new chain")
	case p.carried == 0:
		parts = append(parts, "the old kernel carried nothing")
	default:
		parts = append(parts, fmt.Sprintf("the old kernel carried %d records (%d already stored, %d measured after the last drain)", p.carried, p.dup, len(p.windowCarried)))
	}
	if len(p.reconstructed.recs) > 0 {
		parts = append(parts, "reconstructed "+strings.Join(p.reconstructed.desc, ", "))
	}
	return strings.Join(parts, "; ")
}

// JoinError says why no join replays to the TPM, and what most likely happened.
type JoinError struct {
	Reason     string
	Candidates int
	Err        error // the replay error of the most plausible candidate
	// Overflow is set when the old kernel's list outgrew the kexec segment sized at load.
	Overflow *SegmentOverflow
}

func (e *JoinError) Error() string {
	s := "no join of the store and the live list replays to the TPM: " + e.Reason
	if e.Err != nil {
		s += " (" + e.Err.Error() + ")"
	}
	if e.Candidates > 1 {
		s += fmt.Sprintf("; %d candidate joins tried", e.Candidates)
	}
	return s
}

func (e *JoinError) Unwrap() error { return e.Err }

// heldFrom is the first index of the boot's list the kernel still held at its last drain:
// deletions that met ESTALE (the kernel carries those records) do not count.
func heldFrom(s *Store, bootID string) uint64 {
	var from uint64
	for _, e := range s.entries {
		if d := e.Deleted; d != nil && d.BootID == bootID && !d.Carried && d.Through > from {
			from = d.Through
		}
	}
	return from
}

// bootRecords returns records [from, to) of a boot's list as the store holds them (its
// duplicate and chain segments, in index order).
func bootRecords(s *Store, bootID string, from, to uint64) ([]serialize.Record, error) {
	var out []serialize.Record
	if from >= to {
		return nil, nil
	}
	for _, sg := range s.Segments() {
		if sg.Boot.BootID != bootID || sg.Boot.FirstIndex+sg.Count <= from || sg.Boot.FirstIndex >= to {
			continue
		}
		recs, err := readSegment(s, &sg)
		if err != nil {
			return nil, err
		}
		for i := range recs {
			idx := sg.Boot.FirstIndex + uint64(i)
			if idx >= from && idx < to {
				out = append(out, recs[i])
			}
		}
	}
	if uint64(len(out)) != to-from {
		return nil, &TamperError{File: manifestName, What: fmt.Sprintf("boot %s: store holds %d of its records [%d,%d)", bootID, len(out), from, to)}
	}
	return out, nil
}

// readSegment reads one segment file whole, checking size, SHA-256 and count.
func readSegment(s *Store, sg *Segment) ([]serialize.Record, error) {
	cr := &ChainReader{s: s, segs: []Segment{*sg}, i: -1, all: true, single: true}
	defer cr.Close()
	var out []serialize.Record
	for {
		rec, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, rec.Clone())
	}
}

// readLive reads the running kernel's held records into memory (see liveSource): the
// first skip records are counted, not kept.
func readLive(ctx context.Context, k *Kernel, skip uint64) (recs []serialize.Record, held uint64, err error) {
	src := &liveSource{ctx: ctx, k: k, skip: skip}
	defer src.Close()
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			return recs, src.held, nil
		}
		if err != nil {
			return nil, 0, err
		}
		recs = append(recs, rec.Clone())
	}
}

// liveSource streams the running kernel's held records: the staged list (7.2) then the
// current list, SHA1 form, one file open at a time. The first skip records (stored ones)
// are counted, not returned. Records are valid until the next call.
type liveSource struct {
	ctx  context.Context
	k    *Kernel
	skip uint64
	held uint64 // records read so far, skipped ones included
	next int    // index into the file names
	f    *os.File
	src  *serialize.BinaryReader
	done bool
	// staged: src reads the staged list
	staged bool
	// gapIsError: at the end, a kernel that holds fewer than skip records is the error
	// gap() names, instead of io.EOF (for readers that cannot check gap themselves).
	gapIsError bool
}

func (l *liveSource) Next() (*serialize.Record, error) {
	for {
		if l.done {
			return nil, io.EOF
		}
		if l.src == nil {
			names := []string{l.k.Staged, l.k.List}
			if l.next >= len(names) {
				l.done = true
				if err := l.gap(); err != nil && l.gapIsError {
					return nil, err
				}
				continue
			}
			name := names[l.next]
			l.next++
			if name == "" {
				continue
			}
			f, err := l.k.openKernel(l.ctx, name, os.O_RDONLY)
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", name, err)
			}
			src, err := listReader(f)
			if err != nil {
				f.Close()
				return nil, err
			}
			l.f, l.src, l.staged = f, src, name == l.k.Staged
		}
		rec, err := l.src.Next()
		if errors.Is(err, io.EOF) || (l.staged && errors.Is(err, os.ErrNotExist)) {
			// (RFC v1 staged files fail a read with ENOENT while nothing is staged.)
			l.Close()
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", l.f.Name(), err)
		}
		l.held++
		if l.held > l.skip {
			return rec, nil
		}
	}
}

// Close closes the open list file.
func (l *liveSource) Close() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f, l.src = nil, nil
	}
}

// gap reports, once the list is read, a kernel that holds fewer records than the store
// says it held at the last drain: records deleted by something other than imakexec.
func (l *liveSource) gap() error {
	if l == nil || !l.done || l.held >= l.skip {
		return nil
	}
	return fmt.Errorf("%w: the kernel holds %d records, fewer than the %d stored ones it held at the last drain: records were deleted by something other than imakexec", ErrGap, l.held, l.skip)
}

// lastBootAggregate is the index of the last boot_aggregate record, -1 if none.
func lastBootAggregate(recs []serialize.Record) int {
	for i := len(recs) - 1; i >= 0; i-- {
		if serialize.IsBootAggregate(&recs[i], storeOrder) {
			return i
		}
	}
	return -1
}

func sameRecords(a, b []serialize.Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].PCR != b[i].PCR || !sameTemplate(a[i].Template, b[i].Template) || !bytes.Equal(a[i].Data, b[i].Data) || !bytes.Equal(a[i].Digest, b[i].Digest) {
			return false
		}
	}
	return true
}

// touchedOf is a set of PCRs as a mask indexed by PCR.
func touchedOf(set map[uint32]bool) []bool {
	out := make([]bool, serialize.MaxPCR)
	for p := range set {
		if p < serialize.MaxPCR {
			out[p] = true
		}
	}
	return out
}

// planJoin finds the one join of the store's chain (whose replayed state is chainState),
// the live list and the reconstructable window records that replays to the TPM's PCRs.
//
// Every candidate is proven by the one trust rule (prover): every PCR its records extend,
// in every bank the expectation compares.
func planJoin(s *Store, live []serialize.Record, chainState serialize.PCRValues, chainTouched map[uint32]bool,
	e *expectation, scheme serialize.Scheme, w *WindowInputs) (*joinPlan, error) {
	p := &joinPlan{chainLen: s.Records()}
	boots := s.Boots()
	if len(boots) > 0 {
		b := boots[len(boots)-1]
		p.prev = &b
	}
	ba := lastBootAggregate(live)
	if ba < 0 {
		ba = 0 // no boot_aggregate (deleted already, or no TPM at IMA init): nothing carried
	}
	p.carried = uint64(ba)
	var held []serialize.Record
	if p.prev != nil && p.carried > 0 {
		from := heldFrom(s, p.prev.BootID)
		var err error
		if held, err = bootRecords(s, p.prev.BootID, from, p.prev.Stored); err != nil {
			return nil, err
		}
		if uint64(len(held)) <= p.carried && sameRecords(live[:len(held)], held) {
			p.dup = uint64(len(held))
			p.dupRef = DupRef{BootID: p.prev.BootID, From: from, To: p.prev.Stored}
		} else if len(held) > 0 {
			if sameRecords(live[:min(p.carried, uint64(len(held)))], held[:min(p.carried, uint64(len(held)))]) {
				o, err := segmentOverflow(s, p.prev.BootID, live[:p.carried], held, true)
				if err != nil {
					return nil, err
				}
				if o != nil {
					return nil, &JoinError{Reason: o.String(), Overflow: o}
				}
			}
			return nil, &JoinError{Reason: fmt.Sprintf("the new kernel's list starts with %d carried records that do not continue the %d records the old kernel held at its last drain (boot %s): the old kernel's list changed after the drain, or the store is not this machine's", p.carried, len(held), p.prev.BootID)}
		}
	}
	p.windowCarried = live[p.dup:p.carried]
	rest := live[p.carried:]
	cands, err := windowCandidates(w, storeOrder)
	if err != nil {
		return nil, err
	}
	var firstErr error
	for _, c := range cands {
		p.candidates++
		r, err := e.newReplayer(scheme, chainState)
		if err != nil {
			return nil, err
		}
		pr, err := newProver(r, e, chainTouched)
		if err != nil {
			return nil, err
		}
		for i := range p.windowCarried {
			if err := pr.add(&p.windowCarried[i]); err != nil {
				return nil, fmt.Errorf("carried records: %w", err)
			}
		}
		ok := true
		for i := range c.recs {
			if err := pr.add(&c.recs[i]); err != nil {
				if errors.Is(err, ErrUncovered) {
					return nil, err
				}
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		src := serialize.NewSliceSource(rest)
		v, err := pr.until(src)
		if err != nil {
			if errors.Is(err, ErrUncovered) {
				return nil, err
			}
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		p.reconstructed = c
		p.verified = v
		p.extra = len(rest) - src.Consumed()
		p.bootAggSeq = p.chainLen + uint64(len(p.windowCarried)+len(c.recs))
		return p, nil
	}
	je := &JoinError{Reason: p.diagnose(w, len(rest)), Candidates: p.candidates, Err: firstErr}
	if p.prev != nil && p.carried > 0 {
		o, err := segmentOverflow(s, p.prev.BootID, live[:p.carried], held, true)
		if err != nil {
			return nil, err
		}
		if o != nil {
			je.Reason, je.Overflow = o.String(), o
		}
	}
	return nil, je
}

// diagnose names the most likely cause when no join replays.
func (p *joinPlan) diagnose(w *WindowInputs, rest int) string {
	switch {
	case p.prev == nil:
		return "the live list alone does not replay: records were lost before the first drain of this TPM power cycle, or the list was tampered with"
	case p.carried > 0 && len(p.windowCarried) == 0 && p.dup > 0:
		return "records measured after the last drain were not carried and could not be reconstructed: the old kernel copies its list at kexec_file_load (before 6.16), so what it measured between load and jump is lost"
	case p.carried > 0:
		return "records measured between the kernel's copy of its list and the jump are missing and could not be reconstructed"
	case w == nil:
		return "the old kernel carried nothing and there is no handoff describing the kexec window: records measured after the last drain (by the shutdown and the tool that made the jump, and under a policy with KEXEC_* rules by kexec_file_load) cannot be reconstructed"
	default:
		return "the old kernel carried nothing and no reconstruction of the kexec-window records (kernel image, initrd, command line) replays: records the handoff does not describe were measured after the last drain"
	}
}

// hashBytes hashes b with a kernel hash algorithm.
func hashBytes(algo string, b []byte) ([]byte, error) {
	bank, err := serialize.ParseBank(algo)
	if err != nil {
		return nil, err
	}
	return bank.Sum(b)
}
