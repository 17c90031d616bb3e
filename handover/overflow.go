package handover

import (
	"fmt"

	"github.com/imakexec/imakexec/serialize"
)

// SegmentOverflow says that the old kernel's list outgrew the kexec segment it sized at
// kexec_file_load, so the dump at execute carried only a prefix of it.
//
// From 6.16 with CONFIG_IMA_KEXEC the segment is sized at load (ima_add_kexec_buffer: the
// binary list plus CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB, page aligned) and filled at execute
// (ima_update_kexec_buffer, ima_dump_measurement_list): staged then current records, each
// written only while the buffer is not full (ima_dump_measurement), byte by byte through
// seq_putc, so the record that does not fit is cut at the segment's end and the next one
// is not written ("Dump measurements failed. Error:-22"). The next kernel restores the
// whole records before the cut one (ima_restore_measurement_list stops at it) and the TPM
// holds the extends of every record the old kernel measured, so without this diagnosis
// the join only says "records are missing".
type SegmentOverflow struct {
	SegmentSize uint64 // kexec_segment_size of the last kexec_load payload (ima_measure_kexec_event)
	// ListBytes is the old kernel's list at execute in the kexec buffer format (header
	// included), as far as the carried records and the store show it: a lower bound, since
	// the records measured after the last drain and the kexec_execute record are not carried.
	ListBytes uint64
	Carried   int    // whole records the next kernel restored
	CarriedB  uint64 // bytes they take in the segment, header included
	Held      int    // records the old kernel held at the store's last drain (from the carried head on)
	Proven    bool   // ListBytes > SegmentSize from known records alone
}

func (o *SegmentOverflow) String() string {
	var s string
	if o.Proven {
		s = fmt.Sprintf("the old kernel's list (at least %d bytes at execute) outgrew the kexec segment sized at load (%d bytes): it carried only %d of its records (%d bytes), of %d it held at the last drain",
			o.ListBytes, o.SegmentSize, o.Carried, o.CarriedB, o.Held)
	} else {
		s = fmt.Sprintf("the old kernel's list (more than %d bytes at execute) outgrew the kexec segment sized at load (%d bytes): it carried only %d of its records (%d bytes",
			o.SegmentSize, o.SegmentSize, o.Carried, o.CarriedB)
		if o.CarriedB == o.SegmentSize {
			s += ", filling the segment exactly: the next record did not fit)"
		} else {
			s += fmt.Sprintf(", within %d bytes of the segment's end, where the kernel cuts the record that does not fit)", o.SegmentSize-o.CarriedB)
		}
	}
	s += "; the records after them (the kexec_execute record too) are in the TPM but in no list"
	return s + "; raise CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB, or on 7.2 drain (and delete) right before the jump"
}

// lastKexecPayload is the last kexec_load/kexec_execute record of the old kernel: in the
// carried head of the new list (the old kernel's list, oldest first), else among the
// old boot's stored records.
func lastKexecPayload(s *Store, bootID string, carried []serialize.Record) (serialize.KexecEvent, bool, error) {
	for i := len(carried) - 1; i >= 0; i-- {
		if p, ok := serialize.ParseKexecEvent(&carried[i], storeOrder); ok {
			return p, true, nil
		}
	}
	var last serialize.KexecEvent
	var lastIdx uint64
	found := false
	for _, sg := range s.Segments() {
		if sg.Boot.BootID != bootID || sg.Source == SourceReconstructed {
			continue
		}
		recs, err := readSegment(s, &sg)
		if err != nil {
			return last, false, err
		}
		for i := range recs {
			if p, ok := serialize.ParseKexecEvent(&recs[i], storeOrder); ok && (!found || sg.Boot.FirstIndex+uint64(i) >= lastIdx) {
				last, lastIdx, found = p, sg.Boot.FirstIndex+uint64(i), true
			}
		}
	}
	return last, found, nil
}

// kexecBytes is what records take in the kexec buffer (ima_measurements_show with the
// SHA-1 digest).
func kexecBytes(recs []serialize.Record) uint64 {
	var n uint64
	for i := range recs {
		n += uint64(serialize.RecordSize(&recs[i], serialize.SHA1Size))
	}
	return n
}

// segmentOverflow decides whether a carried head short of the old kernel's list is the
// 6.16+ overflow at execute. carried is the head the next kernel restored, held the
// records the old kernel held at the store's last drain (from the same list index), and
// missing is true when the records after the carried head are known to be missing (the
// join does not replay). It returns nil when the old kernel recorded no kexec_load (no
// segment size is known: before 6.16, or the policy does not measure ima_kexec), when the
// whole list was carried (the kexec_execute record is in the head), or when the carried
// bytes leave room in the segment for more than a page (a restore that stopped for
// another reason).
func segmentOverflow(s *Store, bootID string, carried, held []serialize.Record, missing bool) (*SegmentOverflow, error) {
	if len(carried) > 0 && isKexecExecute(&carried[len(carried)-1]) {
		return nil, nil // the old kernel's last record was carried: the whole list was
	}
	p, ok, err := lastKexecPayload(s, bootID, carried)
	if err != nil || !ok {
		return nil, err
	}
	o := &SegmentOverflow{SegmentSize: p.SegmentSize, Carried: len(carried), Held: len(held)}
	o.CarriedB = serialize.KexecHeaderSize + kexecBytes(carried)
	o.ListBytes = o.CarriedB
	if len(held) > len(carried) {
		o.ListBytes += kexecBytes(held[len(carried):])
	}
	o.Proven = o.ListBytes > o.SegmentSize
	switch {
	case o.CarriedB > o.SegmentSize:
		return nil, nil // not this segment's dump
	case o.Proven:
	case missing && o.SegmentSize-o.CarriedB < pageSize:
		// The cut record fills the segment to its end (seq_putc): what was carried ends
		// within one record of the segment's size.
	default:
		return nil, nil
	}
	return o, nil
}

// pageSize is PAGE_SIZE on the architectures imakexec runs on: the segment is page
// aligned and its extra memory is at least half a page (ima_add_kexec_buffer).
const pageSize = 4096

func isKexecExecute(rec *serialize.Record) bool {
	p, ok := serialize.ParseKexecEvent(rec, storeOrder)
	return ok && p.Name == "kexec_execute"
}
