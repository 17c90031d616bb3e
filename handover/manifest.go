package handover

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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

// Join records how rejoin joined a new kernel's list to the chain (design.md invariant 3):
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
	// PCRs are the TPM's values the join was proven against.
	PCRs map[string]map[string]string `json:"pcrs"`
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
// kernel's kexec handover format (spec §10.4).
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
	// the previous segment (hex).
	PCRs map[string]map[string]string `json:"pcrs"`
	// BootHash is the marshalled SHA-256 state over this boot's records (their kexec-format
	// bytes) through the end of this segment, and BootSum its sum: how a later drain
	// recognises stored records at the head of the kernel's list without re-reading them.
	BootHash string `json:"boot_hash_state"`
	BootSum  string `json:"boot_sum"`
	// Duplicates, when set, marks a segment that is not part of the chain: the head of a
	// kernel's list that the previous kernel carried across kexec (spec §10.6), records the
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

// parseManifest parses manifest bytes. A last line without its newline is a write cut short
// by a crash: it is ignored and good is the length of the complete lines. Any complete line
// that does not parse or does not chain is tampering.
func parseManifest(b []byte) (entries []Entry, lastHash string, good int, err error) {
	off := 0
	for off < len(b) {
		nl := bytes.IndexByte(b[off:], '\n')
		if nl < 0 {
			break // torn tail
		}
		line := b[off : off+nl]
		n := len(entries)
		var e Entry
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, "", 0, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("not a manifest entry: %v", err)}
		}
		if e.Index != n {
			return nil, "", 0, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("entry index %d at line %d (lines removed, added or reordered)", e.Index, n+1)}
		}
		if n == 0 {
			if e.Type != EntryHeader || e.Header == nil {
				return nil, "", 0, &TamperError{File: manifestName, Line: 1, What: "first line is not the header"}
			}
			if e.Header.Version != ManifestVersion {
				return nil, "", 0, fmt.Errorf("%s: manifest version %d, this imakexec reads version %d", manifestName, e.Header.Version, ManifestVersion)
			}
		} else {
			if e.Prev != lastHash {
				return nil, "", 0, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("previous-entry hash %.16s… does not match line %d (%.16s…): line %d was edited, or lines were removed or reordered", e.Prev, n, lastHash, n)}
			}
			switch {
			case e.Type == EntrySegment && e.Segment != nil:
			case e.Type == EntryDeleted && e.Deleted != nil:
			case e.Type == EntryJoin && e.Join != nil:
			default:
				return nil, "", 0, &TamperError{File: manifestName, Line: n + 1, What: fmt.Sprintf("entry of type %q without its body", e.Type)}
			}
		}
		entries = append(entries, e)
		lastHash = lineHash(line)
		off += nl + 1
	}
	return entries, lastHash, off, nil
}

// encodeEntry marshals e as one line (without newline).
func encodeEntry(e *Entry) ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, err
	}
	return b, nil
}
