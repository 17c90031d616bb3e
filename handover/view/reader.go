package view

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/serialize"
)

// chunk is how much a read renders ahead at least: sequential readers are served from the
// rendered bytes of the previous read.
const chunk = 64 << 10

// renderBatch is how many stored records are rendered between two flushes.
const renderBatch = 64

// Reader is one open file of the view (one per open(2)): a cursor over the log in one
// format. ReadAt may be called at any offset, concurrently; a read that continues where
// the previous one ended goes on from its cursor, any other read is placed by the index.
type Reader struct {
	v    *View
	f    Format
	gen  int
	mu   sync.Mutex
	rend *renderer

	buf    []byte // rendered bytes [bufOff, bufOff+len(buf))
	bufOff int64  // -1: no position
	next   cursor // the record after buf's end
	sn     *snap  // the snapshot of this read pass; dropped when a read reaches its end

	segf     *os.File // the segment file of next, read from segStart
	segI     int
	segStart int64
	br       *serialize.BinaryReader
}

// cursor is the next record to render. seg and foff locate it in the store when placed
// is set; a cursor that went past the store's end (live records) is placed again by the
// index once the store holds its record.
type cursor struct {
	seq    uint64
	seg    int
	foff   int64
	placed bool
}

// Open returns a reader of format f.
func (v *View) Open(f Format) *Reader {
	return &Reader{v: v, f: f, gen: v.current().gen, rend: newRenderer(f), bufOff: -1, segI: -1}
}

// Close releases the reader's segment file.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeSeg()
	r.buf, r.sn = nil, nil
	return nil
}

func (r *Reader) closeSeg() {
	if r.segf != nil {
		r.segf.Close()
	}
	r.segf, r.br, r.segI = nil, nil, -1
}

// ReadAt reads the view's bytes at off. It returns fewer bytes than asked (0 at the end)
// only at the end of the log as of this read; a later read may find more.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if r.v.current().gen != r.gen {
		return 0, ErrStale
	}
	if r.bufOff < 0 || off < r.bufOff || off > r.bufOff+int64(len(r.buf)) {
		ok, err := r.seek(ctx, off)
		if err != nil || !ok {
			r.sn = nil
			return 0, err
		}
	}
	for {
		if end := r.bufOff + int64(len(r.buf)); end <= off {
			r.bufOff, r.buf = end, r.buf[:0]
		} else if off > r.bufOff {
			n := copy(r.buf, r.buf[off-r.bufOff:])
			r.buf, r.bufOff = r.buf[:n], off
		}
		if len(r.buf) >= len(p) {
			break
		}
		more, err := r.render(ctx, max(len(p)-len(r.buf), chunk))
		if err != nil {
			r.bufOff, r.buf = -1, r.buf[:0]
			r.sn = nil
			r.closeSeg()
			return 0, err
		}
		if !more {
			break
		}
	}
	n := 0
	if off >= r.bufOff {
		n = copy(p, r.buf)
	}
	if n < len(p) {
		r.sn = nil // the end of this pass: the next read looks at the kernel again
	}
	return n, nil
}

// seek places the cursor at the record holding off; false when off is past the end.
func (r *Reader) seek(ctx context.Context, off int64) (bool, error) {
	r.buf, r.bufOff = r.buf[:0], -1
	c := r.v.current()
	if off >= c.end(r.f) {
		sn, err := r.snapshot(ctx)
		if err != nil {
			return false, err
		}
		c = sn.c
		if end := c.end(r.f); off >= end {
			offs, err := sn.tailOffsets(r.f, r.rend)
			if err != nil {
				return false, err
			}
			rel := off - end
			i := sort.Search(len(offs), func(i int) bool { return offs[i] > rel }) - 1
			if i >= len(sn.Live) {
				return false, nil
			}
			r.next = cursor{seq: sn.stored + uint64(i)}
			r.bufOff = end + offs[i]
			return true, nil
		}
	}
	i := sort.Search(len(c.cps), func(i int) bool { return c.cps[i].off(r.f) > off }) - 1
	if i < 0 {
		return false, nil // no stored record (off is then 0 and past the end)
	}
	cp := c.cps[i]
	r.next = cursor{seq: cp.seq, seg: cp.seg, foff: cp.foff, placed: true}
	r.bufOff = cp.off(r.f)
	return true, nil
}

func (r *Reader) snapshot(ctx context.Context) (*snap, error) {
	sn, err := r.v.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	if sn.c.gen != r.gen {
		return nil, ErrStale
	}
	r.sn = sn
	return sn, nil
}

// render appends at least want bytes of records from the cursor to buf, fewer at the end
// of the log; false when nothing was left.
func (r *Reader) render(ctx context.Context, want int) (bool, error) {
	start := len(r.buf)
	for len(r.buf)-start < want {
		c := r.v.current()
		if c.gen != r.gen {
			return false, ErrStale
		}
		if r.next.seq < c.stored {
			// Stored records in batches: written to the renderer's buffer, flushed once.
			for k := 0; k < renderBatch && r.next.seq < c.stored; k++ {
				rec, sg, err := r.stored(c)
				if err != nil {
					return false, err
				}
				sc, err := segmentScheme(sg)
				if err != nil {
					return false, err
				}
				r.rend.setScheme(sc)
				if err := r.rend.write(rec); err != nil {
					return false, fmt.Errorf("render record %d: %w", r.next.seq, err)
				}
				r.next.seq++
				r.next.foff += int64(serialize.RecordSize(rec, serialize.SHA1Size))
			}
			var err error
			if r.buf, err = r.rend.flush(r.buf); err != nil {
				return false, err
			}
			continue
		}
		if r.sn == nil {
			if _, err := r.snapshot(ctx); err != nil {
				return false, err
			}
			continue
		}
		if r.next.seq < r.sn.stored {
			return false, fmt.Errorf("view: record %d is stored but not indexed", r.next.seq)
		}
		i := r.next.seq - r.sn.stored
		if i >= uint64(len(r.sn.Live)) {
			break
		}
		r.rend.setScheme(r.sn.Scheme)
		var err error
		if r.buf, err = r.rend.append(r.buf, &r.sn.Live[i]); err != nil {
			return false, fmt.Errorf("render live record %d: %w", r.next.seq, err)
		}
		r.next.seq++
		r.next.placed = false
	}
	return len(r.buf) > start, nil
}

// stored reads the record at the cursor from its segment file.
func (r *Reader) stored(c *chain) (*serialize.Record, *handover.Segment, error) {
	if !r.next.placed {
		if err := r.place(c); err != nil {
			return nil, nil, err
		}
	}
	for r.next.seg < len(c.segs) && r.next.seq >= c.segs[r.next.seg].End() {
		r.next.seg++
		r.next.foff = serialize.KexecHeaderSize
	}
	if r.next.seg >= len(c.segs) {
		return nil, nil, fmt.Errorf("view: record %d is past the indexed segments", r.next.seq)
	}
	sg := &c.segs[r.next.seg]
	if r.segI != r.next.seg || r.br == nil || r.br.Offset() != r.next.foff-r.segStart {
		r.closeSeg()
		f, err := c.store.OpenSegment(*sg)
		if err != nil {
			return nil, nil, err
		}
		r.segf, r.segI, r.segStart = f, r.next.seg, r.next.foff
		r.br = serialize.NewBinaryReader(bufio.NewReaderSize(io.NewSectionReader(f, r.next.foff, sg.Size-r.next.foff), 64<<10), handover.StoreOrder, serialize.SHA1Size)
	}
	rec, err := r.br.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, nil, fmt.Errorf("view: segment %d: record %d: %w", sg.Number, r.next.seq, err)
	}
	return rec, sg, nil
}

// place finds the stored record at the cursor's sequence number: from the checkpoint
// before it, skipping at most IndexEvery records.
func (r *Reader) place(c *chain) error {
	seq := r.next.seq
	i := sort.Search(len(c.cps), func(i int) bool { return c.cps[i].seq > seq }) - 1
	if i < 0 {
		return fmt.Errorf("view: no checkpoint before record %d", seq)
	}
	cp := c.cps[i]
	r.next = cursor{seq: cp.seq, seg: cp.seg, foff: cp.foff, placed: true}
	for r.next.seq < seq {
		rec, _, err := r.stored(c)
		if err != nil {
			return err
		}
		r.next.seq++
		r.next.foff += int64(serialize.RecordSize(rec, serialize.SHA1Size))
	}
	return nil
}
