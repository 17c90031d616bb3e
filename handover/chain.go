package handover

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/imakexec/imakexec/serialize"
)

// Boundary is a point of the chain where a kernel started or prepared a kexec: its
// boot_aggregate, and the 6.16+ kexec_load / kexec_execute critical-data records.
type Boundary struct {
	Seq  uint64 `json:"seq"`
	Kind string `json:"kind"` // "boot_aggregate", "kexec_load", "kexec_execute"
}

var (
	markBootAggregate = []byte(serialize.BootAggregateName)
	markKexecLoad     = []byte("kexec_load")
	markKexecExecute  = []byte("kexec_execute")
)

// observer watches every record of a replay: it collects boundaries and checks each
// boot_aggregate against the TPM's PCRs 0-9 (ima_calc_boot_aggregate, 7.2).
type observer struct {
	tpm        serialize.PCRValues // nil: boot_aggregates are not checked
	scheme     serialize.Scheme
	boundaries []Boundary
	bootAggErr error
	pcrs       map[uint32]bool
}

func (o *observer) see(seq uint64, rec *serialize.Record) {
	if o.pcrs == nil {
		o.pcrs = map[uint32]bool{}
	}
	o.pcrs[rec.PCR] = true
	// Cheap filter first: most records name none of these.
	if !bytes.Contains(rec.Data, markBootAggregate) && !bytes.Contains(rec.Data, markKexecLoad) && !bytes.Contains(rec.Data, markKexecExecute) {
		return
	}
	switch serialize.EventName(rec, storeOrder) {
	case serialize.BootAggregateName:
		o.boundaries = append(o.boundaries, Boundary{Seq: seq, Kind: "boot_aggregate"})
		if o.tpm != nil && o.bootAggErr == nil {
			if err := serialize.CheckBootAggregate(rec, int(seq), o.tpm, o.scheme, storeOrder); err != nil {
				o.bootAggErr = err
			}
		}
	case "kexec_load":
		o.boundaries = append(o.boundaries, Boundary{Seq: seq, Kind: "kexec_load"})
	case "kexec_execute":
		o.boundaries = append(o.boundaries, Boundary{Seq: seq, Kind: "kexec_execute"})
	}
}

// gaps reports kexec_load records not followed by kexec_execute before the next kernel's
// boot_aggregate: records measured between the load and the jump were lost (the
// 6.16+ kexec critical-data records, ima_measure_kexec_event).
func (o *observer) gaps() []string {
	var out []string
	pending := -1
	for _, b := range o.boundaries {
		switch b.Kind {
		case "kexec_load":
			pending = int(b.Seq)
		case "kexec_execute":
			pending = -1
		case "boot_aggregate":
			if pending >= 0 {
				out = append(out, fmt.Sprintf("kexec_load at record %d has no kexec_execute before the boot_aggregate at record %d", pending, b.Seq))
			}
			pending = -1
		}
	}
	return out
}

// observed wraps a source so every record passes the observer, numbered from seq.
type observed struct {
	src serialize.Source
	obs *observer
	seq uint64
}

func (o *observed) Next() (*serialize.Record, error) {
	rec, err := o.src.Next()
	if err != nil {
		return nil, err
	}
	o.obs.see(o.seq, rec)
	o.seq++
	return rec, nil
}

// segmentSource yields the records of one chain segment from a ChainReader, keeping the
// first record of the next segment for the next call.
type segmentSource struct {
	cr      *ChainReader
	seg     int
	pending *serialize.Record
	done    bool
}

func (s *segmentSource) Next() (*serialize.Record, error) {
	if s.pending != nil {
		r := s.pending
		s.pending = nil
		return r, nil
	}
	if s.done {
		return nil, io.EOF
	}
	rec, err := s.cr.Next()
	if err != nil {
		s.done = errors.Is(err, io.EOF)
		return nil, err
	}
	if s.cr.i != s.seg {
		s.pending = rec
		return nil, io.EOF
	}
	return rec, nil
}

// next moves to the segment of the pending record; false at the end of the chain.
func (s *segmentSource) next() bool {
	if s.pending == nil {
		if s.done {
			return false
		}
		rec, err := s.cr.Next()
		if err != nil {
			s.done = true
			return false
		}
		s.pending = rec
	}
	s.seg = s.cr.i
	return true
}

// walkChain replays the store's chain from zero with the one chain verifier (Store.walk)
// and returns the replayer positioned after the chain, so the live list can continue it.
func walkChain(s *Store, banks []serialize.Bank, obs *observer) (*serialize.Replayer, error) {
	r, _, err := s.walk(banks, obs)
	return r, err
}

// walk is the one chain verifier, behind Check, verify and rejoin: it reads every segment
// file in manifest order, duplicate segments included (present, regular, size, SHA-256,
// record count, numbering and sequence continuity: ChainReader), validates every field of
// every segment entry once (checkSegmentFields; first_index continuity per boot, the boot
// hashes, a duplicate's claim against the records it repeats), replays the chain's records
// in banks with each segment's extend scheme, and requires the values the manifest records
// after each segment to agree with the replay in every bank both hold. Any difference is a
// *TamperError naming the file, line or segment. obs, when set, sees every chain record.
//
// The recorded values are a consistency check of the store, never what a verdict rests
// on: an attacker who rewrites the store recomputes them too (see trust.go).
func (s *Store) walk(banks []serialize.Bank, obs *observer) (*serialize.Replayer, *CheckResult, error) {
	res := &CheckResult{PCRs: serialize.PCRValues{}}
	r, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Order: storeOrder, DigestBank: &serialize.SHA1})
	if err != nil {
		return nil, nil, err
	}
	h := s.Header()
	if h == nil {
		return r, res, nil
	}
	hb, err := headerBanks(h)
	if err != nil {
		return nil, nil, err
	}
	if obs == nil {
		obs = &observer{}
	}
	segs := s.Segments()
	lineOf := map[int]int{}
	for _, e := range s.entries {
		if e.Segment != nil {
			lineOf[e.Segment.Number] = e.Index + 1
		}
	}
	cr := s.allReader()
	defer cr.Close()
	src := &segmentSource{cr: cr, seg: -1}
	ws := &walkSource{src: src, dg: serialize.NewDigester()}
	bootEnd := map[string]uint64{}
	bootSt := map[string]string{}
	// sums[boot][end] is the boot hash sum of that boot's records [0, end).
	sums := map[string]map[uint64]string{}
	for src.next() {
		sg := &segs[src.seg]
		line := lineOf[sg.Number]
		tamper := func(file, format string, a ...any) error {
			what := fmt.Sprintf("segment %d: ", sg.Number) + fmt.Sprintf(format, a...)
			if file == manifestName {
				return &TamperError{File: file, Line: line, What: what}
			}
			return &TamperError{File: file, What: fmt.Sprintf("%s (line %d)", what, line)}
		}
		scheme, err := checkSegmentFields(sg)
		if err != nil {
			return nil, nil, tamper(manifestName, "%v", err)
		}
		id := sg.Boot.BootID
		if end, ok := bootEnd[id]; ok && sg.Boot.FirstIndex != end {
			return nil, nil, tamper(manifestName, "starts at index %d of boot %s, the previous one ended at %d", sg.Boot.FirstIndex, id, end)
		}
		if ws.bh, err = newBootHasher(bootSt[id]); err != nil {
			return nil, nil, tamper(manifestName, "boot hash state: %v", err)
		}
		if sg.InChain() {
			r.SetScheme(scheme)
			obs.scheme = scheme
			ws.obs, ws.seq = obs, sg.FirstSeq
			if err := r.AddAll(ws); err != nil {
				var te *TamperError
				if errors.As(err, &te) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
					return nil, nil, err
				}
				return nil, nil, tamper(sg.File, "%v", err)
			}
		} else {
			ws.obs = nil
			for {
				if _, err := ws.Next(); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					return nil, nil, err
				}
			}
		}
		if ws.bh.sum() != sg.BootSum || ws.bh.state() != sg.BootHash {
			return nil, nil, tamper(sg.File, "boot hash differs from the manifest")
		}
		end := sg.Boot.FirstIndex + sg.Count
		bootEnd[id], bootSt[id] = end, sg.BootHash
		if sums[id] == nil {
			sums[id] = map[uint64]string{0: hex.EncodeToString(sha256.New().Sum(nil))}
		}
		sums[id][end] = sg.BootSum
		res.Segments++
		res.Bytes += sg.Size
		if d := sg.Duplicates; d != nil {
			// A carried head from index 0 must hash like the old kernel's stored list. The
			// bytes may differ only in the template name: the next kernel restores a
			// custom ima_template_fmt under the built-in name of the same format
			// (ima_restore_measurement_list, 7.2), so the records are then compared one by
			// one as the join compares them (sameRecords).
			if want, ok := sums[d.BootID][d.To]; d.From == 0 && ok && want != sg.BootSum {
				if same, err := repeatsStored(s, sg); err != nil || !same {
					return nil, nil, tamper(sg.File, "does not repeat records [0,%d) of boot %s as it claims", d.To, d.BootID)
				}
			}
			continue
		}
		want, err := decodePCRs(sg.PCRs)
		if err != nil {
			return nil, nil, tamper(manifestName, "%v", err)
		}
		if !hintsMatch(r.State(), want, banks, hb) {
			return nil, nil, tamper(sg.File, "replays to PCR values other than the manifest records for it")
		}
	}
	if err := cr.err; err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	if res.Segments != len(segs) {
		return nil, nil, &TamperError{File: manifestName, What: fmt.Sprintf("%d segments checked of %d (a segment without records)", res.Segments, len(segs))}
	}
	if uint64(r.Records()) != s.Records() {
		return nil, nil, &TamperError{File: manifestName, What: fmt.Sprintf("the chain has %d records, the manifest says %d", r.Records(), s.Records())}
	}
	res.Records = uint64(r.Records())
	res.PCRs = onlyBanks(r.State(), hb)
	return r, res, nil
}

// walkSource yields one segment's records from a segmentSource, adding each record's
// kexec-format bytes to the boot hash and showing chain records to the observer.
type walkSource struct {
	src *segmentSource
	bh  *bootHasher
	obs *observer // nil for a duplicate segment
	seq uint64
	dg  *serialize.Digester
	buf []byte
}

func (w *walkSource) Next() (*serialize.Record, error) {
	rec, err := w.src.Next()
	if err != nil {
		return nil, err
	}
	if w.buf, err = serialize.AppendKexecRecord(w.buf[:0], rec, w.dg, storeOrder); err != nil {
		return nil, err
	}
	w.bh.h.Write(w.buf)
	if w.obs != nil {
		w.obs.see(w.seq, rec)
		w.seq++
	}
	return rec, nil
}

// checkSegmentFields validates the fields of a segment entry that no file content checks:
// every value must be one this package writes. It returns the segment's extend scheme.
func checkSegmentFields(sg *Segment) (serialize.Scheme, error) {
	scheme, err := sg.Scheme.Extend()
	if err != nil {
		return 0, err
	}
	switch sg.Source {
	case SourceStaged, SourceDeletedN, SourceTrimmed, SourceSnapshot, SourceCarried, SourceReconstructed, SourceDuplicate:
	default:
		return 0, fmt.Errorf("unknown source %q", sg.Source)
	}
	if (sg.Source == SourceDuplicate) != (sg.Duplicates != nil) {
		return 0, fmt.Errorf("source %q with duplicates %v", sg.Source, sg.Duplicates != nil)
	}
	if d := sg.Duplicates; d != nil && (d.To < d.From || d.To-d.From != sg.Count || d.BootID == "") {
		return 0, fmt.Errorf("duplicate range [%d,%d) of boot %q for %d records", d.From, d.To, d.BootID, sg.Count)
	}
	if len(sg.Reconstructed) > 0 && sg.Source != SourceReconstructed {
		return 0, fmt.Errorf("reconstructed records in a segment of source %q", sg.Source)
	}
	if sg.ByteOrder != "little" {
		return 0, fmt.Errorf("byte order %q (segments are little-endian)", sg.ByteOrder)
	}
	if sg.FlushHtable != "on" && sg.FlushHtable != "off" {
		return 0, fmt.Errorf("flush_htable %q", sg.FlushHtable)
	}
	if sg.Boot.BootID == "" {
		return 0, errors.New("no boot id")
	}
	if sg.Count > uint64(math.MaxInt64) || sg.FirstSeq > math.MaxUint64-sg.Count || sg.Boot.FirstIndex > math.MaxUint64-sg.Count {
		return 0, fmt.Errorf("count %d, first_seq %d, first_index %d out of range", sg.Count, sg.FirstSeq, sg.Boot.FirstIndex)
	}
	return scheme, nil
}

// hintsMatch reports whether the values the manifest records after a segment (want) agree
// with the replay (got): they name only header banks, and in every header bank that was
// replayed they equal the replay, PCR for PCR.
func hintsMatch(got, want serialize.PCRValues, replayed, header []serialize.Bank) bool {
	inHeader := func(name string) bool {
		return slices.ContainsFunc(header, func(b serialize.Bank) bool { return b.Name == name })
	}
	for _, m := range want {
		for name := range m {
			if !inHeader(name) {
				return false
			}
		}
	}
	for _, b := range replayed {
		if !inHeader(b.Name) {
			continue
		}
		for p := uint32(0); p < serialize.MaxPCR; p++ {
			if !bytes.Equal(got.Get(p, b.Name), want.Get(p, b.Name)) {
				return false
			}
		}
	}
	return true
}

// knowsBoot reports whether the store's chain includes the kernel with this boot id: it
// stored records of it, or rejoin joined it.
func (s *Store) knowsBoot(bootID string) bool {
	return s.Boot(bootID) != nil || s.joinOf(bootID) != nil
}

// joinOf is the join entry of a boot, nil if none.
func (s *Store) joinOf(bootID string) *Join {
	for _, j := range s.Joins() {
		if j.BootID == bootID {
			return &j
		}
	}
	return nil
}

// notJoined is ErrNotJoined for drain: the running boot is new to a store that holds a
// chain, and rejoin has not joined it yet. A drain now would store the records the old
// kernel carried a second time, or start a second chain beside the first: one store per
// host, joined before it is drained.
func notJoined(bootID string) error {
	return fmt.Errorf("%w (boot id %s); drain refuses so that no record is stored twice and the chain is not split", ErrNotJoined, bootID)
}

// repeatsStored reports whether the duplicate segment sg holds the records it claims to
// repeat, record by record, template names compared by format (sameTemplate).
func repeatsStored(s *Store, sg *Segment) (bool, error) {
	d := sg.Duplicates
	old, err := bootRecords(s, d.BootID, d.From, d.To)
	if err != nil {
		return false, err
	}
	dup, err := readSegment(s, sg)
	if err != nil {
		return false, err
	}
	return sameRecords(old, dup), nil
}
