package handover

import (
	"errors"
	"fmt"
	"io"

	"github.com/imakexec/imakexec/serialize"
)

// Finding where the kernel's list stands against the store: which of this boot's records are
// stored, where a deletion stopped, and one pass that stores what is new.

// boundary is a point in this boot's list where a deletion may have stopped: the end of a
// stored segment (or the confirmed deletion point), with the boot hash state there.
type boundary struct {
	at     uint64
	state  string
	source Source
}

// bootView is the store's view of the running kernel.
type bootView struct {
	stored, deleted uint64
	sum             string // boot hash sum at stored
	bounds          []boundary
	lastSource      Source
}

func (d *drainer) view() bootView {
	var v bootView
	bs := d.s.Boot(d.ki.BootID)
	if bs == nil {
		v.bounds = []boundary{{at: 0}}
		return v
	}
	// A delete refused with ESTALE (kexec under way) is recorded as carried: the next kernel
	// holds those records, but this one still does until the jump. A drain before the jump
	// must find them at the head of the list and skip them, not store them twice.
	v.stored, v.deleted = bs.Stored, bs.Deleted-bs.DeletedBy[deletedCarried]
	if v.deleted == 0 {
		v.bounds = append(v.bounds, boundary{at: 0})
	}
	for _, sg := range bs.segs {
		end := sg.Boot.FirstIndex + sg.Count
		if end >= v.deleted {
			v.bounds = append(v.bounds, boundary{at: end, state: sg.BootHash, source: sg.Source})
		}
		v.sum = sg.BootSum
		v.lastSource = sg.Source
	}
	return v
}

// heldReader opens the kernel's held records from their start.
type heldReader func() (serialize.Source, error)

// resolve decides how many of the stored-but-undeleted records of this boot the kernel
// still holds at the head of its list (the rest were deleted by an interrupted run). When
// forced is non-nil the deletion point is known (ima_trim_log's T, or an empty staged
// list); otherwise the head of the held list is compared with the boot hashes at every
// possible deletion point. It returns the deletion point.
func (d *drainer) resolve(v bootView, open heldReader, forced *uint64) (uint64, error) {
	if v.stored == v.deleted {
		if forced != nil && *forced > v.stored {
			return 0, d.gapErr(v, *forced)
		}
		if forced != nil && *forced < v.stored {
			return 0, fmt.Errorf("%w: the kernel reports %d records deleted since boot, the store recorded %d", ErrStoreMismatch, *forced, v.deleted)
		}
		return v.deleted, nil
	}
	if forced != nil {
		if *forced > v.stored {
			return 0, d.gapErr(v, *forced)
		}
		if *forced < v.deleted {
			return 0, fmt.Errorf("%w: the kernel reports %d records deleted since boot, the store recorded %d", ErrStoreMismatch, *forced, v.deleted)
		}
		return *forced, nil
	}
	// Candidates below stored; stored itself (everything deleted) is the fallback.
	var cands []boundary
	for _, b := range v.bounds {
		if b.at < v.stored {
			cands = append(cands, b)
		}
	}
	src, err := open()
	if err != nil {
		return 0, err
	}
	hs := make([]*bootHasher, len(cands))
	for i, c := range cands {
		if hs[i], err = newBootHasher(c.state); err != nil {
			return 0, err
		}
	}
	need := v.stored - cands[0].at
	dg := serialize.NewDigester()
	var buf []byte
	match := -1
	for i := uint64(0); i <= need; i++ {
		for ci := range cands {
			if i == v.stored-cands[ci].at && hs[ci] != nil {
				if hs[ci].sum() == v.sum && match < 0 {
					match = ci
				}
				hs[ci] = nil
			}
		}
		if match >= 0 || i == need {
			break
		}
		if i&4095 == 0 {
			if err := d.interrupted(); err != nil {
				return 0, err
			}
		}
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read kernel list: %w", err)
		}
		if buf, err = serialize.AppendKexecRecord(buf[:0], rec, dg, storeOrder); err != nil {
			return 0, err
		}
		for _, h := range hs {
			if h != nil {
				h.h.Write(buf)
			}
		}
	}
	if match >= 0 {
		return cands[match].at, nil
	}
	return v.stored, nil
}

func (d *drainer) gapErr(v bootView, deleted uint64) error {
	return fmt.Errorf("%w: the kernel deleted %d records of this boot, the store holds %d; records %d..%d are lost for this power cycle", ErrGap, deleted, v.stored, v.stored, deleted-1)
}

// pass reads the held list: the first stored-delPoint records must be the stored ones
// (checked against the boot hash), the rest are persisted as a new segment. It returns
// the records read, how many were already stored, and whether the deletable range
// [delPoint, end) holds a record that is not a violation.
type passResult struct {
	held, retained, stored uint64
	anyReal                bool
	seg                    *Segment
}

func (d *drainer) pass(v bootView, delPoint uint64, open heldReader, source Source) (*passResult, error) {
	pr := &passResult{}
	skip := v.stored - delPoint
	var st string
	for _, b := range v.bounds {
		if b.at == delPoint {
			st = b.state
		}
	}
	if delPoint > 0 && st == "" && skip > 0 {
		return nil, fmt.Errorf("%w: no boot hash at index %d", ErrStoreMismatch, delPoint)
	}
	vh, err := newBootHasher(st)
	if err != nil {
		return nil, err
	}
	src, err := open()
	if err != nil {
		return nil, err
	}
	dg := serialize.NewDigester()
	var buf []byte
	var sw *segWriter
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if sw != nil {
				sw.abort()
			}
			return nil, fmt.Errorf("read kernel list: %w", err)
		}
		pr.held++
		if pr.held&4095 == 0 {
			if err := d.interrupted(); err != nil {
				if sw != nil {
					sw.abort()
				}
				return nil, err
			}
		}
		if !rec.IsViolation() {
			pr.anyReal = true
		}
		if err := d.hook(StepRead, pr.held); err != nil {
			if sw != nil {
				sw.abort()
			}
			return nil, err
		}
		if pr.held <= skip {
			if buf, err = serialize.AppendKexecRecord(buf[:0], rec, dg, storeOrder); err != nil {
				return nil, err
			}
			vh.h.Write(buf)
			pr.retained++
			if pr.held == skip && vh.sum() != v.sum {
				return nil, fmt.Errorf("%w: the first %d records the kernel holds are not the %d records stored for boot %s after index %d", ErrStoreMismatch, skip, skip, d.ki.BootID, delPoint)
			}
			continue
		}
		if sw == nil {
			if sw, err = d.newSegment(v, source); err != nil {
				return nil, err
			}
		}
		if err := sw.add(rec); err != nil {
			sw.abort()
			return nil, err
		}
		if err := d.hook(StepWrite, sw.count); err != nil {
			sw.abort()
			return nil, err
		}
	}
	if pr.held < skip {
		return nil, fmt.Errorf("%w: the kernel holds %d records, the store expects at least %d of boot %s still held", ErrStoreMismatch, pr.held, skip, d.ki.BootID)
	}
	if sw != nil {
		seg, err := sw.commit(pr.held, pr.retained)
		if err != nil {
			return nil, err
		}
		pr.seg = seg
		pr.stored = seg.Count
		d.res.Segments = append(d.res.Segments, *seg)
	}
	// Every backend deletes right after this pass: a drain cancelled by now stops with its
	// records stored and durable, and deletes nothing (the next drain finishes).
	if err := d.interrupted(); err != nil {
		return nil, err
	}
	return pr, nil
}

// interrupted returns the drain's context error, if it was cancelled.
func (d *drainer) interrupted() error {
	if d.ctx == nil {
		return nil
	}
	if err := d.ctx.Err(); err != nil {
		return fmt.Errorf("drain interrupted (what was stored is durable, nothing more was deleted; the next drain goes on): %w", err)
	}
	return nil
}
