package handover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

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

// walkChain replays the store's chain from zero, checking every segment file and every
// segment's recorded PCR values on the way (a dropped, reordered or edited segment is a
// *TamperError naming it). It returns the replayer positioned after the chain, so the live
// list can continue it.
func walkChain(s *Store, banks []serialize.Bank, obs *observer) (*serialize.Replayer, error) {
	r, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Order: storeOrder, DigestBank: &serialize.SHA1})
	if err != nil {
		return nil, err
	}
	segs := s.ChainSegments()
	cr := s.Reader()
	defer cr.Close()
	src := &segmentSource{cr: cr, seg: -1}
	ob := &observed{obs: obs}
	for src.next() {
		sg := &segs[src.seg]
		scheme, err := sg.Scheme.Extend()
		if err != nil {
			return nil, &TamperError{File: manifestName, What: fmt.Sprintf("segment %d: %v", sg.Number, err)}
		}
		r.SetScheme(scheme)
		obs.scheme = scheme
		ob.src, ob.seq = src, sg.FirstSeq
		if err := r.AddAll(ob); err != nil {
			var te *TamperError
			if errors.As(err, &te) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil, err
			}
			return nil, &TamperError{File: sg.File, What: fmt.Sprintf("segment %d: %v", sg.Number, err)}
		}
		want, err := decodePCRs(sg.PCRs)
		if err != nil {
			return nil, &TamperError{File: manifestName, What: fmt.Sprintf("segment %d: %v", sg.Number, err)}
		}
		if !hintsAgree(r.State(), want, banks) {
			return nil, &TamperError{File: sg.File, What: fmt.Sprintf("segment %d replays to PCR values other than the manifest records for it", sg.Number)}
		}
	}
	if err := cr.err; err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if uint64(r.Records()) != s.Records() {
		return nil, &TamperError{File: manifestName, What: fmt.Sprintf("the chain has %d records, the manifest says %d", r.Records(), s.Records())}
	}
	return r, nil
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
