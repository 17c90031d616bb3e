package serialize

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// PCRValues maps PCR index -> bank name -> value.
type PCRValues map[uint32]map[string][]byte

// Set stores a copy of v.
func (p PCRValues) Set(pcr uint32, bank string, v []byte) {
	m := p[pcr]
	if m == nil {
		m = map[string][]byte{}
		p[pcr] = m
	}
	m[bank] = bytes.Clone(v)
}

// Get returns the value or nil.
func (p PCRValues) Get(pcr uint32, bank string) []byte { return p[pcr][bank] }

// Clone returns a deep copy.
func (p PCRValues) Clone() PCRValues {
	out := PCRValues{}
	for pcr, m := range p {
		for b, v := range m {
			out.Set(pcr, b, v)
		}
	}
	return out
}

// Source yields records; BinaryReader, KexecReader and ASCIIReader implement it.
type Source interface {
	Next() (*Record, error)
}

// SliceSource yields the records of a slice in order, then io.EOF.
type SliceSource struct {
	recs []Record
	i    int
}

// NewSliceSource is a Source over recs (none for nil).
func NewSliceSource(recs []Record) *SliceSource { return &SliceSource{recs: recs} }

// Next implements Source.
func (s *SliceSource) Next() (*Record, error) {
	if s.i >= len(s.recs) {
		return nil, io.EOF
	}
	s.i++
	return &s.recs[s.i-1], nil
}

// Consumed is how many records Next has returned.
func (s *SliceSource) Consumed() int { return s.i }

// Replayer extends records into software PCRs exactly as the kernel extends them into the
// TPM (ima_add_template_entry; docs/kernel.md, "Extending the TPM"): each record into its own PCR, in every bank, violations as 0xFF.
// It is incremental: Add records one by one, from zero or from a given state.
type Replayer struct {
	banks  []Bank
	dg     Digester
	vals   [][]byte // bank index * MaxPCR + pcr
	last   [MaxPCR]int
	start  [MaxPCR]bool // PCRs given a start value
	target [][]byte     // expected values for prefix matching, nil where not checked
	mism   int          // target pairs that differ now
	check  *Bank        // bank of Record.Digest, checked against the data when set
	checkI int          // index of check in banks, -1 when not replayed
	n      int
	viol   int
	ext    [64]byte
	buf    [128]byte
}

// ReplayOptions configures a Replayer.
type ReplayOptions struct {
	Banks  []Bank    // banks to replay; default SHA1 and SHA256
	Scheme Scheme    // extend scheme of the producing kernel
	Order  ByteOrder // byte order of lengths inside `ima` template data; default LE
	// Start is the PCR state to continue from (incremental replay); missing PCRs start at
	// zero, the value after a TPM reset.
	Start PCRValues
	// DigestBank, when set, is the bank of Record.Digest: each non-violation record's
	// stored digest must equal the digest of its data (else ErrDigestMismatch), so a list
	// whose data was edited cannot replay by its stored digests alone.
	DigestBank *Bank
}

// NewReplayer returns a replayer; it fails for banks whose kernel hash is not implemented.
func NewReplayer(o ReplayOptions) (*Replayer, error) {
	banks := o.Banks
	if len(banks) == 0 {
		banks = []Bank{SHA1, SHA256}
	}
	r := &Replayer{banks: slices.Clone(banks), checkI: -1}
	r.dg.Scheme = o.Scheme
	r.dg.Order = o.Order
	if r.dg.Order == nil {
		r.dg.Order = binary.LittleEndian
	}
	for i := range r.last {
		r.last[i] = -1
	}
	r.vals = make([][]byte, len(banks)*MaxPCR)
	for bi, b := range r.banks {
		if o.Scheme == SchemeHash {
			if err := b.checkComputable(); err != nil {
				return nil, err
			}
		}
		for p := uint32(0); p < MaxPCR; p++ {
			v := make([]byte, b.Size)
			if sv := o.Start.Get(p, b.Name); sv != nil {
				if len(sv) != b.Size {
					return nil, fmt.Errorf("start value for PCR %d bank %s has %d bytes, want %d", p, b.Name, len(sv), b.Size)
				}
				copy(v, sv)
				r.start[p] = true
			}
			r.vals[bi*MaxPCR+int(p)] = v
		}
	}
	if o.DigestBank != nil {
		db := *o.DigestBank
		r.check = &db
		for bi, b := range r.banks {
			if b.Name == db.Name {
				r.checkI = bi
			}
		}
	}
	return r, nil
}

// SetScheme changes the extend scheme, for a chain whose kernels differ (≤5.7 then 5.8+).
func (r *Replayer) SetScheme(s Scheme) { r.dg.Scheme = s }

// SetDigestBank changes the bank that Record.Digest is checked against (nil: no check).
func (r *Replayer) SetDigestBank(b *Bank) {
	r.check, r.checkI = nil, -1
	if b == nil {
		return
	}
	db := *b
	r.check = &db
	for bi, rb := range r.banks {
		if rb.Name == db.Name {
			r.checkI = bi
		}
	}
}

// Banks returns the replayed banks.
func (r *Replayer) Banks() []Bank { return slices.Clone(r.banks) }

// Records and Violations count what was added.
func (r *Replayer) Records() int    { return r.n }
func (r *Replayer) Violations() int { return r.viol }

// Add extends one record.
func (r *Replayer) Add(rec *Record) error {
	if rec.PCR >= MaxPCR {
		return fmt.Errorf("record %d: %w: pcr %d", r.n, ErrFormat, rec.PCR)
	}
	viol := rec.IsViolation()
	for bi := range r.banks {
		b := &r.banks[bi]
		if err := r.dg.ExtendValue(r.ext[:], rec, b); err != nil {
			return fmt.Errorf("record %d: %w", r.n, err)
		}
		if !viol && bi == r.checkI && r.dg.Scheme == SchemeHash && len(rec.Digest) == b.Size && !bytes.Equal(rec.Digest, r.ext[:b.Size]) {
			return r.digestMismatch(rec, r.ext[:b.Size])
		}
		v := r.vals[bi*MaxPCR+int(rec.PCR)]
		copy(r.buf[:], v)
		copy(r.buf[b.Size:], r.ext[:b.Size])
		if b.hash != 0 {
			b.sum(v, r.buf[:2*b.Size])
		} else {
			// Banks the kernel has no hash for: the TPM still extends with its own
			// algorithm, which this package cannot compute.
			return fmt.Errorf("record %d: %w: cannot compute the TPM's %s extend", r.n, ErrUnknownBank, b.Name)
		}
		if r.target != nil {
			r.retarget(bi, rec.PCR)
		}
	}
	if !viol && r.check != nil && r.checkI < 0 && len(rec.Digest) == r.check.Size {
		var d [64]byte
		if err := r.dg.TemplateDigest(d[:], rec, r.check); err != nil {
			return fmt.Errorf("record %d: %w", r.n, err)
		}
		if !bytes.Equal(rec.Digest, d[:r.check.Size]) {
			return r.digestMismatch(rec, d[:r.check.Size])
		}
	}
	if viol {
		r.viol++
	}
	r.last[rec.PCR] = r.n
	r.n++
	return nil
}

func (r *Replayer) digestMismatch(rec *Record, want []byte) error {
	return fmt.Errorf("record %d (%s, pcr %d): %w: %s digest %x, data hashes to %x",
		r.n, rec.Template, rec.PCR, ErrDigestMismatch, r.check.Name, rec.Digest, want)
}

// Value returns the current value of a PCR in a bank (nil for a bank not replayed).
func (r *Replayer) Value(pcr uint32, bank string) []byte {
	for bi, b := range r.banks {
		if b.Name == bank && pcr < MaxPCR {
			return bytes.Clone(r.vals[bi*MaxPCR+int(pcr)])
		}
	}
	return nil
}

// Touched reports the PCRs that a record was extended into, or that had a start value.
func (r *Replayer) Touched() []uint32 {
	var out []uint32
	for p := uint32(0); p < MaxPCR; p++ {
		if r.last[p] >= 0 || r.start[p] {
			out = append(out, p)
		}
	}
	return out
}

// State returns the values of the touched PCRs in every bank: what the log claims.
func (r *Replayer) State() PCRValues {
	out := PCRValues{}
	for _, p := range r.Touched() {
		for bi, b := range r.banks {
			out.Set(p, b.Name, r.vals[bi*MaxPCR+int(p)])
		}
	}
	return out
}

// Result is an unverified replay: what the log claims the PCRs are.
func (r *Replayer) Result() *Result {
	return &Result{Records: r.n, Violations: r.viol, PCRs: r.State(), banks: r.Banks(), last: r.last}
}

// Result is the outcome of replaying a log that has not been checked against a TPM. Only
// Verify turns it into a Verified.
type Result struct {
	Records    int
	Violations int
	PCRs       PCRValues
	banks      []Bank
	last       [MaxPCR]int
}

// Verified is a replay whose PCR values equal the expected (TPM) values in every bank.
type Verified struct {
	// Records is the number of records that make up the verified log (a prefix, when the
	// log ran ahead of the quote).
	Records    int
	Violations int
	PCRs       PCRValues
	Banks      []Bank
}

// Verify compares the replayed PCRs with expected, in every replayed bank. Every PCR a record
// was extended into must have an expected value.
func (res *Result) Verify(expected PCRValues) (*Verified, error) {
	var first *ReplayError
	mism := 0
	for _, p := range sortedPCRs(res.PCRs) {
		for _, b := range res.banks {
			got := res.PCRs.Get(p, b.Name)
			want := expected.Get(p, b.Name)
			if want == nil {
				return nil, fmt.Errorf("%w: no expected value for PCR %d bank %s", ErrMismatch, p, b.Name)
			}
			if !bytes.Equal(got, want) {
				mism++
				if first == nil {
					first = &ReplayError{Bank: b.Name, PCR: p, Expected: bytes.Clone(want), Got: bytes.Clone(got), Record: res.last[p], Records: res.Records}
				}
			}
		}
	}
	if first != nil {
		first.Mismatched = mism
		return nil, first
	}
	return &Verified{Records: res.Records, Violations: res.Violations, PCRs: res.PCRs.Clone(), Banks: slices.Clone(res.banks)}, nil
}

func sortedPCRs(v PCRValues) []uint32 {
	var ps []uint32
	for p := range v {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// SetTarget arms prefix matching: after every Add, Matches reports whether the replayed
// values of all PCRs in expected (in every replayed bank) equal expected.
func (r *Replayer) SetTarget(expected PCRValues) error {
	r.target = make([][]byte, len(r.banks)*MaxPCR)
	r.mism = 0
	for p, m := range expected {
		if p >= MaxPCR {
			return fmt.Errorf("expected value for PCR %d out of range", p)
		}
		for bi, b := range r.banks {
			v, ok := m[b.Name]
			if !ok {
				continue
			}
			if len(v) != b.Size {
				return fmt.Errorf("expected value for PCR %d bank %s has %d bytes, want %d", p, b.Name, len(v), b.Size)
			}
			r.target[bi*MaxPCR+int(p)] = bytes.Clone(v)
			if !bytes.Equal(v, r.vals[bi*MaxPCR+int(p)]) {
				r.mism++
			}
		}
	}
	return nil
}

// retarget updates the mismatch count after PCR p of bank bi changed; r.buf still holds the
// old value at that point.
func (r *Replayer) retarget(bi int, p uint32) {
	t := r.target[bi*MaxPCR+int(p)]
	if t == nil {
		return
	}
	b := &r.banks[bi]
	was := bytes.Equal(t, r.buf[:b.Size]) // r.buf holds the old value at this point
	now := bytes.Equal(t, r.vals[bi*MaxPCR+int(p)])
	switch {
	case was && !now:
		r.mism++
	case !was && now:
		r.mism--
	}
}

// Matches reports whether every target pair is equal now (see SetTarget).
func (r *Replayer) Matches() bool { return r.target != nil && r.mism == 0 }

// Verified returns the current state as verified; only valid when Matches is true.
func (r *Replayer) verified() *Verified {
	return &Verified{Records: r.n, Violations: r.viol, PCRs: r.State(), Banks: r.Banks()}
}

// Replay replays every record of src.
func Replay(src Source, o ReplayOptions) (*Result, error) {
	r, err := NewReplayer(o)
	if err != nil {
		return nil, err
	}
	if err := r.AddAll(src); err != nil {
		return nil, err
	}
	return r.Result(), nil
}

// AddAll adds every record of src. With several banks and CPUs it hashes the banks in
// parallel; the result is the same.
func (r *Replayer) AddAll(src Source) error {
	if r.useParallel() {
		return r.addAllParallel(src)
	}
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := r.Add(rec); err != nil {
			return err
		}
	}
}

// ReplayPrefix replays src until the first prefix whose PCR values equal expected (in every
// replayed bank, for every PCR in expected), as a verifier must for a log that runs ahead of
// a quote (docs/kernel.md, "Extending the TPM"). Records after that prefix are left unread in src. When
// no prefix matches it returns the *ReplayError of the full log.
func ReplayPrefix(src Source, o ReplayOptions, expected PCRValues) (*Verified, error) {
	r, err := NewReplayer(o)
	if err != nil {
		return nil, err
	}
	return r.AddUntil(src, expected)
}

// AddUntil adds records from src until the state matches expected (see ReplayPrefix).
func (r *Replayer) AddUntil(src Source, expected PCRValues) (*Verified, error) {
	if err := r.SetTarget(expected); err != nil {
		return nil, err
	}
	defer func() { r.target = nil }()
	if r.Matches() && len(expected) > 0 {
		return r.verified(), nil
	}
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := r.Add(rec); err != nil {
			return nil, err
		}
		if r.mism == 0 {
			return r.verified(), nil
		}
	}
	return nil, r.mismatch(expected)
}

// mismatch describes how the current state differs from expected, over the PCRs and banks
// that expected names.
func (r *Replayer) mismatch(expected PCRValues) error {
	var first *ReplayError
	n := 0
	for _, p := range sortedPCRs(expected) {
		for bi, b := range r.banks {
			want := expected.Get(p, b.Name)
			if want == nil || p >= MaxPCR {
				continue
			}
			got := r.vals[bi*MaxPCR+int(p)]
			if bytes.Equal(got, want) {
				continue
			}
			n++
			if first == nil {
				first = &ReplayError{Bank: b.Name, PCR: p, Expected: bytes.Clone(want), Got: bytes.Clone(got), Record: r.last[p], Records: r.n}
			}
		}
	}
	if first == nil {
		return fmt.Errorf("%w: expected values name no replayed PCR and bank", ErrMismatch)
	}
	first.Mismatched = n
	return first
}
