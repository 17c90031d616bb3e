package handover

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/imakexec/imakexec/serialize"
)

// ManifestVersion is the version of the manifest format written by this package.
const ManifestVersion = 1

// Store layout below the store directory.
const (
	manifestName = "manifest.jsonl"
	segmentsDir  = "segments"
	archiveDir   = "archive"
	lockName     = "lock"
)

// Source says where a segment's records came from.
type Source string

// Segment sources.
const (
	SourceStaged        Source = "staged"        // staged with A, read, deleted with D (7.2)
	SourceDeletedN      Source = "deleted-n"     // read, deleted with N (7.2)
	SourceTrimmed       Source = "trimmed"       // read, trimmed with T:N (ima_trim_log v5)
	SourceSnapshot      Source = "snapshot"      // read, nothing deleted
	SourceCarried       Source = "carried"       // carried by the kernel across kexec (rejoin)
	SourceReconstructed Source = "reconstructed" // rebuilt kexec-window records (rejoin)
	SourceDuplicate     Source = "duplicate"     // a carried list head the chain already holds (rejoin)
)

// EntryType is the kind of a manifest line.
type EntryType string

// Entry kinds.
const (
	EntryHeader  EntryType = "header"
	EntrySegment EntryType = "segment"
	EntryDeleted EntryType = "deleted"
	EntryJoin    EntryType = "join"
)

// Scheme is a segment's extend scheme as the manifest spells it (serialize.Scheme's names).
type Scheme string

// Extend schemes: per-bank template hashes (5.8+, ima_calc_field_array_hash) or the SHA1
// template digest padded for every bank (5.1-5.7).
const (
	SchemeHash Scheme = "hash"
	SchemePad  Scheme = "pad"
)

// schemeOf names a serialize.Scheme.
func schemeOf(s serialize.Scheme) Scheme { return Scheme(s.String()) }

// Extend parses the scheme; anything but "hash" or "pad" is an error (a tampered manifest).
func (s Scheme) Extend() (serialize.Scheme, error) {
	switch s {
	case SchemeHash:
		return serialize.SchemeHash, nil
	case SchemePad:
		return serialize.SchemePad, nil
	}
	return 0, fmt.Errorf("unknown extend scheme %q (want hash or pad)", string(s))
}

// Entry is one line of the manifest (manifest.jsonl): a JSON object per line. Every line but
// the first carries Prev, the SHA-256 of the previous line's bytes (without its newline),
// so a dropped, reordered or edited line breaks the chain where it happened.
type Entry struct {
	Type  EntryType `json:"type"`
	Index int       `json:"index"` // line number, from 0
	Prev  string    `json:"prev,omitempty"`
	Time  time.Time `json:"time"`

	Header  *Header   `json:"header,omitempty"`
	Segment *Segment  `json:"segment,omitempty"`
	Deleted *Deletion `json:"deleted,omitempty"`
	Join    *Join     `json:"join,omitempty"`
}

// Join records how rejoin joined a new kernel's list to the chain (every join is proven by the TPM):
// which candidate the TPM proved, and where the new boot starts.
type Join struct {
	BootID     string `json:"boot_id"`
	Generation int    `json:"generation"`
	// PrevBootID is the kernel the store held before; empty for the first boot of a chain.
	PrevBootID string `json:"prev_boot_id,omitempty"`
	// KernelCarried is how many records at the head of the new list the old kernel carried:
	// Duplicated of them the chain held already, the rest were measured after the last drain.
	KernelCarried uint64 `json:"kernel_carried"`
	Duplicated    uint64 `json:"duplicated"`
	// Reconstructed counts kexec-window records rebuilt from the handoff and proven.
	Reconstructed uint64 `json:"reconstructed"`
	// BootAggregateSeq is the chain sequence number of the new kernel's boot_aggregate.
	BootAggregateSeq uint64 `json:"boot_aggregate_seq"`
	// Candidate describes the join that replayed to the TPM; Candidates how many were tried.
	Candidate  string `json:"candidate"`
	Candidates int    `json:"candidates"`
	// PCRs are the TPM's values the join was proven against (pcrsJSON, decodePCRs).
	PCRs json.RawMessage `json:"pcrs"`
}

// TPMBinding ties the store to one TPM power cycle (TPM2_ReadClock, TPMS_CLOCK_INFO).
type TPMBinding struct {
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
}

// Header is the first manifest line.
type Header struct {
	Version int        `json:"version"`
	StoreID string     `json:"store_id"`
	TPM     TPMBinding `json:"tpm"`
	// Banks are the PCR banks replayed into Segment.PCRs (TPM banks the kernel extends
	// with a hash this package computes).
	Banks []string `json:"banks"`
}

// BootInfo is the kernel a segment was read from. Generation counts the kernels of one TPM
// power cycle in the store: 0 for the first, +1 at every new boot id (a kexec).
type BootInfo struct {
	BootID        string `json:"boot_id"`
	Generation    int    `json:"generation"`
	KernelRelease string `json:"kernel_release"`
	// FirstIndex is the position of the segment's first record in this kernel's list
	// since it booted, deleted records included (restored kexec records count too).
	FirstIndex uint64 `json:"first_index"`
}

// Segment describes one segment file: a run of consecutive records of the chain, in the
// kernel's kexec handover format (struct ima_kexec_hdr, then records as ima_dump_measurement_list
// writes them).
type Segment struct {
	Number   int      `json:"number"` // 1, 2, ...
	File     string   `json:"file"`   // relative to the store directory
	SHA256   string   `json:"sha256"` // of the whole file
	Size     int64    `json:"size"`
	FirstSeq uint64   `json:"first_seq"` // global sequence number of the first record (from 0)
	Count    uint64   `json:"count"`
	Source   Source   `json:"source"`
	Backend  Backend  `json:"backend"`
	Boot     BootInfo `json:"boot"`
	// IMAHash is the ima_hash= boot parameter ("" for the kernel's default).
	IMAHash     string     `json:"ima_hash"`
	KernelBanks []string   `json:"kernel_banks,omitempty"` // banks with a per-bank list file (6.10+)
	Scheme      Scheme     `json:"scheme"`                 // extend scheme: "hash" (5.8+) or "pad"
	ByteOrder   string     `json:"byte_order"`             // "little" or "big"
	FlushHtable string     `json:"flush_htable"`           // "on" or "off"
	TPM         TPMBinding `json:"tpm"`                    // clock read at this drain
	// Held is how many records the kernel held (staged and current) when this drain read
	// them; Retained how many of this boot's stored records the kernel still held when this
	// segment was committed (before any delete of this drain).
	Held     uint64 `json:"held"`
	Retained uint64 `json:"retained"`
	// PCRs are the replayed values after this segment, per PCR and bank, continuing from
	// the previous segment (hex): {"10":{"sha256":"…"}}. They are kept as the line's raw
	// JSON and decoded only where used (decodePCRs: the last segment, and each segment as
	// the chain is read), so loading a long manifest builds no map per line.
	PCRs json.RawMessage `json:"pcrs"`
	// BootHash is the marshalled SHA-256 state over this boot's records (their kexec-format
	// bytes) through the end of this segment, and BootSum its sum: how a later drain
	// recognises stored records at the head of the kernel's list without re-reading them.
	BootHash string `json:"boot_hash_state"`
	BootSum  string `json:"boot_sum"`
	// Duplicates, when set, marks a segment that is not part of the chain: the head of a
	// kernel's list that the previous kernel carried across kexec (ima_add_kexec_buffer, restored by
	// ima_restore_measurement_list), records the
	// chain already holds. It is kept so drains of this boot recognise that head, and so
	// the carried copy can be compared with the original (Check).
	Duplicates *DupRef `json:"duplicates,omitempty"`
	// Reconstructed lists, for a segment of source "reconstructed", what each record was
	// rebuilt from (kexec-window records the old kernel measured but did not carry); they
	// are in the chain only because the TPM proved them (rejoin).
	Reconstructed []string `json:"reconstructed,omitempty"`
}

// DupRef names the records a duplicate segment repeats: indexes [From, To) of the list of
// the kernel with BootID.
type DupRef struct {
	BootID string `json:"boot_id"`
	From   uint64 `json:"from"`
	To     uint64 `json:"to"`
}

// InChain reports whether the segment's records are part of the chain.
func (s *Segment) InChain() bool { return s.Duplicates == nil }

// End is one past the last sequence number.
func (s *Segment) End() uint64 { return s.FirstSeq + s.Count }

// Deletion records that the kernel no longer holds this boot's records before Through
// (an index since boot): deleted by D, N or T:N, or (Carried) refused with ESTALE because
// kexec is under way, so the next kernel will carry them and rejoin must not add them twice.
type Deletion struct {
	BootID  string  `json:"boot_id"`
	Through uint64  `json:"through"`
	Method  Backend `json:"method"` // backend
	Carried bool    `json:"carried,omitempty"`
	// Resolved marks a deletion found by a later run (a crash came between delete and
	// manifest update).
	Resolved bool `json:"resolved,omitempty"`
}

// ErrTampered marks a store whose manifest or files do not match each other.
var ErrTampered = errors.New("store does not verify")

// TamperError names what was found wrong in a store.
type TamperError struct {
	File string // relative to the store
	Line int    // manifest line (from 1), 0 when not about a line
	What string
}

func (e *TamperError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%v: %s line %d: %s", ErrTampered, e.File, e.Line, e.What)
	}
	return fmt.Sprintf("%v: %s: %s", ErrTampered, e.File, e.What)
}

func (e *TamperError) Unwrap() error { return ErrTampered }

func lineHash(line []byte) string {
	s := sha256.Sum256(line)
	return hex.EncodeToString(s[:])
}

// Manifest bounds. A manifest over MaxManifestSize is refused with an error naming the
// limit (never read in part: a shortened read would look like a torn write and the next
// drain would cut the rest off). A segment line is about 1 KiB, so the bound holds some
// 200,000 drains of one TPM power cycle.
const (
	MaxManifestSize = 256 << 20
	maxManifestLine = 1 << 20
)

// ErrManifestTooLarge: the manifest is over MaxManifestSize.
var ErrManifestTooLarge = errors.New("manifest too large")

// manifestState is the result of reading a manifest.
type manifestState struct {
	entries  []Entry
	lastHash string
	good     int64 // length of the complete lines
	torn     bool  // an incomplete last line follows them
}

// parseManifest reads a manifest as a stream of lines, each at most maxManifestLine bytes,
// size bytes in all (the file's size, checked by the caller against MaxManifestSize). A
// last line without its newline is a write cut short by a crash: it is ignored, and good
// is the length of the complete lines. Any complete line that does not parse, does not
// chain, or holds a value out of range (see manifestChecker) is tampering.
func parseManifest(r io.Reader) (*manifestState, error) {
	st := &manifestState{}
	br := bufio.NewReaderSize(r, 64<<10)
	var chk manifestChecker
	ld := newLineDecoder()
	in := interner{}
	var long []byte
	for {
		frag, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(long)+len(frag) > maxManifestLine {
				return nil, &TamperError{File: manifestName, Line: len(st.entries) + 1, What: fmt.Sprintf("line longer than %d bytes", maxManifestLine)}
			}
			long = append(long, frag...)
			continue
		}
		line := frag
		if long != nil {
			line = append(long, frag...)
			long = nil
		}
		if err == io.EOF {
			st.torn = len(line) > 0
			if st.torn && len(line) > maxManifestLine {
				return nil, &TamperError{File: manifestName, Line: len(st.entries) + 1, What: fmt.Sprintf("line longer than %d bytes", maxManifestLine)}
			}
			return st, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", manifestName, err)
		}
		if len(line) > maxManifestLine+1 {
			return nil, &TamperError{File: manifestName, Line: len(st.entries) + 1, What: fmt.Sprintf("line longer than %d bytes", maxManifestLine)}
		}
		body := line[:len(line)-1]
		e, err := ld.parseEntry(body, len(st.entries), st.lastHash)
		if err != nil {
			return nil, err
		}
		if err := chk.check(&e); err != nil {
			return nil, err
		}
		if e.Segment != nil {
			in.segment(e.Segment)
		}
		st.entries = append(st.entries, e)
		st.lastHash = lineHash(body)
		st.good += int64(len(line))
	}
}

// lineDecoder decodes manifest lines, one JSON value per line, strictly (unknown fields
// refused), with one json.Decoder for all of them: it is fed line by line (lineFeed), so
// its buffer is reused instead of a decoder and a buffer being made for every line. A
// decode error ends the manifest's parse, so the decoder's sticky error never matters.
type lineDecoder struct {
	feed lineFeed
	dec  *json.Decoder
	off  int64 // bytes fed to dec before the current line
}

func newLineDecoder() *lineDecoder {
	ld := &lineDecoder{}
	ld.dec = json.NewDecoder(&ld.feed)
	ld.dec.DisallowUnknownFields()
	return ld
}

// lineFeed yields the current line, then io.EOF until the next line is set.
type lineFeed struct{ b []byte }

func (l *lineFeed) Read(p []byte) (int, error) {
	if len(l.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, l.b)
	l.b = l.b[n:]
	return n, nil
}

// interner shares the strings that repeat from segment line to segment line (boot ids,
// releases, bank lists, enums), so a loaded manifest keeps one copy of each, not one per
// line.
type interner struct {
	strs  map[string]string
	banks []string // the last segment's KernelBanks
}

func (in *interner) str(s *string) {
	if in.strs == nil {
		in.strs = map[string]string{}
	}
	if v, ok := in.strs[*s]; ok {
		*s = v
	} else if len(in.strs) < 4096 {
		in.strs[*s] = *s
	}
}

func (in *interner) segment(sg *Segment) {
	for _, p := range []*string{&sg.Boot.BootID, &sg.Boot.KernelRelease, &sg.IMAHash, (*string)(&sg.Scheme), &sg.ByteOrder, &sg.FlushHtable, (*string)(&sg.Source), (*string)(&sg.Backend)} {
		in.str(p)
	}
	if slices.Equal(sg.KernelBanks, in.banks) {
		sg.KernelBanks = in.banks
	} else {
		in.banks = sg.KernelBanks
	}
}

// parseEntry parses line n (from 0) and checks it chains to the line before (prev).
func (ld *lineDecoder) parseEntry(line []byte, n int, prev string) (Entry, error) {
	var e Entry
	ld.feed.b = line
	start := ld.off
	ld.off += int64(len(line))
	dec := ld.dec
	if err := dec.Decode(&e); err != nil {
		return e, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("not a manifest entry: %v", err)}
	}
	// Everything after the value must be white space (a "}" too would otherwise be left
	// for the next line).
	if used := dec.InputOffset() - start; used < 0 || used > int64(len(line)) || len(bytes.Trim(line[used:], " \t\r\n")) != 0 {
		return e, &TamperError{File: manifestName, Line: n + 1, What: "data after the entry"}
	}
	if e.Index != n {
		return e, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("entry index %d at line %d (lines removed, added or reordered)", e.Index, n+1)}
	}
	if n == 0 {
		if e.Type != EntryHeader || e.Header == nil {
			return e, &TamperError{File: manifestName, Line: 1, What: "first line is not the header"}
		}
		if e.Header.Version != ManifestVersion {
			return e, fmt.Errorf("%s: manifest version %d, this imakexec reads version %d", manifestName, e.Header.Version, ManifestVersion)
		}
		return e, nil
	}
	if e.Prev != prev {
		return e, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("previous-entry hash %.16s… does not match line %d (%.16s…): line %d was edited, or lines were removed or reordered", e.Prev, n, prev, n)}
	}
	switch {
	case e.Type == EntrySegment && e.Segment != nil && e.Deleted == nil && e.Join == nil && e.Header == nil:
	case e.Type == EntryDeleted && e.Deleted != nil && e.Segment == nil && e.Join == nil && e.Header == nil:
	case e.Type == EntryJoin && e.Join != nil && e.Segment == nil && e.Deleted == nil && e.Header == nil:
	default:
		return e, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("entry of type %q without its body, or with another's", e.Type)}
	}
	return e, nil
}

// manifestChecker range-checks, line by line, every manifest value that drain, rejoin and
// the readers use in arithmetic or as an index, so that none of them can overflow,
// underflow or index out of range on a crafted manifest: segment numbers, names and sizes,
// sequence and per-boot positions, and deletion points. It does not prove the records;
// replay against the TPM does.
//
// What it guarantees for the unsigned arithmetic on manifest values: per boot, a segment
// starts where the boot's stored records end (so BootState.Stored never decreases), and a
// deletion point is the end of a stored segment (so Deleted <= Stored, and
// Retained = Stored - Deleted cannot underflow); FirstSeq+Count and FirstIndex+Count do
// not overflow; a duplicate's [From, To) is ordered and as long as its records; a join's
// Duplicated <= KernelCarried; the extend scheme is one Scheme.Extend knows.
type manifestChecker struct {
	segs     int               // segments so far
	chainEnd uint64            // end of the in-chain sequence numbers
	boots    map[string]uint64 // per boot id: records stored, [0, end) of its list
	ends     map[string]map[uint64]bool
	deleted  map[string]uint64
}

func (c *manifestChecker) check(e *Entry) error {
	if c.boots == nil {
		c.boots, c.ends, c.deleted = map[string]uint64{}, map[string]map[uint64]bool{}, map[string]uint64{}
	}
	bad := func(format string, a ...any) error {
		return &TamperError{File: manifestName, Line: e.Index + 1, What: fmt.Sprintf(format, a...)}
	}
	switch {
	case e.Segment != nil:
		sg := e.Segment
		if sg.Number != c.segs+1 {
			return bad("segment number %d, want %d", sg.Number, c.segs+1)
		}
		if sg.File != segmentName(sg.Number) {
			return bad("segment %d names file %q, want %q", sg.Number, sg.File, segmentName(sg.Number))
		}
		if sg.Count == 0 || sg.Size < serialize.KexecHeaderSize || uint64(sg.Size-serialize.KexecHeaderSize)/minKexecRecord < sg.Count {
			return bad("segment %d: %d records cannot fit in %d bytes", sg.Number, sg.Count, sg.Size)
		}
		if sg.Boot.BootID == "" || sg.Boot.Generation < 0 {
			return bad("segment %d: no boot id or a negative generation", sg.Number)
		}
		if _, err := sg.Scheme.Extend(); err != nil {
			return bad("segment %d: %v", sg.Number, err)
		}
		if sg.FirstSeq+sg.Count < sg.FirstSeq || sg.Boot.FirstIndex+sg.Count < sg.Boot.FirstIndex {
			return bad("segment %d: first_seq or first_index overflows", sg.Number)
		}
		if end, ok := c.boots[sg.Boot.BootID]; ok && sg.Boot.FirstIndex != end {
			return bad("segment %d starts at index %d of boot %s, its stored records end at %d", sg.Number, sg.Boot.FirstIndex, sg.Boot.BootID, end)
		} else if !ok && sg.Boot.FirstIndex != 0 && sg.Source != SourceReconstructed {
			return bad("segment %d starts boot %s at index %d, not 0", sg.Number, sg.Boot.BootID, sg.Boot.FirstIndex)
		}
		if d := sg.Duplicates; d != nil {
			if d.From > d.To || d.To-d.From != sg.Count {
				return bad("segment %d repeats records [%d,%d), not its %d records", sg.Number, d.From, d.To, sg.Count)
			}
		} else if sg.FirstSeq != c.chainEnd {
			return bad("segment %d starts at sequence number %d, the chain ends at %d", sg.Number, sg.FirstSeq, c.chainEnd)
		} else {
			c.chainEnd = sg.End()
		}
		c.segs++
		end := sg.Boot.FirstIndex + sg.Count
		c.boots[sg.Boot.BootID] = end
		if c.ends[sg.Boot.BootID] == nil {
			c.ends[sg.Boot.BootID] = map[uint64]bool{}
		}
		c.ends[sg.Boot.BootID][end] = true
	case e.Deleted != nil:
		del := e.Deleted
		stored, ok := c.boots[del.BootID]
		if !ok {
			return bad("deletion for boot %s, which has no stored records", del.BootID)
		}
		if del.Through > stored {
			return bad("deletion through index %d of boot %s, beyond the %d records stored", del.Through, del.BootID, stored)
		}
		if !c.ends[del.BootID][del.Through] {
			return bad("deletion through index %d of boot %s, not the end of a stored segment", del.Through, del.BootID)
		}
		switch del.Method {
		case BackendStaged, BackendDeleteN, BackendTrimLog:
		default:
			return bad("deletion by %q, not a deleting backend", del.Method)
		}
		c.deleted[del.BootID] = max(c.deleted[del.BootID], del.Through)
	case e.Join != nil:
		if j := e.Join; j.Duplicated > j.KernelCarried || j.Generation < 0 {
			return bad("join of boot %s: %d duplicated of %d carried, generation %d", j.BootID, j.Duplicated, j.KernelCarried, j.Generation)
		}
	}
	return nil
}

// minKexecRecord is the smallest record of the kexec format: PCR, SHA1 digest, name
// length, an empty name, data length (ima_dump_measurement_list).
const minKexecRecord = 4 + 20 + 4 + 4

// encodeEntry marshals e as one line (without newline).
func encodeEntry(e *Entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	return b, nil
}
