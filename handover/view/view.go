package view

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/serialize"
)

// ErrStale is returned to readers that opened a file in an earlier chain: a cold boot (a
// new TPM power cycle) started a new chain, and, as after a reboot, the list restarts
// from record 0 for readers that open it again.
var ErrStale = errors.New("the chain was restarted by a cold boot (TPM reset): open the file again")

// DefaultIndexEvery is the number of records between two checkpoints of the index.
const DefaultIndexEvery = 256

// Options configures a View.
type Options struct {
	Paths    handover.Paths
	StoreDir string
	// Busy bounds the EBUSY retries on the kernel's files per read (default 2 s).
	Busy time.Duration
	// IndexEvery is the number of records between checkpoints (default DefaultIndexEvery):
	// a read starting at an arbitrary offset renders at most that many records before it.
	IndexEvery int
	// Logf, when set, receives what the view notices (chain restarts, read errors).
	Logf func(format string, args ...any)
}

// checkpoint locates one record: where it is in its segment file and where it starts in
// the binary and ASCII lists with SHA1 digests (other banks add Format.delta per record).
type checkpoint struct {
	seq  uint64
	seg  int   // index into chain.segs
	foff int64 // offset of the record in the segment file
	bin  int64
	asc  int64
}

// chain is the indexed stored part of the view. A chain value is never changed once
// installed; refresh installs a new one (sharing the append-only slices).
type chain struct {
	gen    int    // +1 at every restart (cold boot)
	id     string // store id and TPM reset count of the store's header; "" without a store
	segs   []handover.Segment
	cps    []checkpoint
	stored uint64 // records in segs
	bin    int64  // SHA1 binary size of segs' records
	asc    int64  // SHA1 ASCII size of segs' records
	banks  []serialize.Bank
	store  *handover.Store // for opening segment files
}

// end is the size of the stored part in format f.
func (c *chain) end(f Format) int64 {
	base := c.bin
	if f.Kind == ASCII {
		base = c.asc
	}
	return base + int64(c.stored)*f.delta()
}

func (cp *checkpoint) off(f Format) int64 {
	base := cp.bin
	if f.Kind == ASCII {
		base = cp.asc
	}
	return base + int64(cp.seq)*f.delta()
}

// View is the joined log, shared by every reader.
type View struct {
	o     Options
	mu    sync.Mutex // guards cur
	cur   *chain
	build sync.Mutex // one refresh at a time

	sr       *handover.Snapshotter
	fmu      sync.Mutex // guards inflight, lastEnd, lastTook, waiters
	inflight *flight
	lastEnd  time.Time
	lastTook time.Duration
	waiters  int // readers that waited for the last flight
}

// flight is one snapshot being taken, shared by the readers that arrived before it began.
type flight struct {
	done  chan struct{}
	start time.Time
	sn    *snap
	err   error
}

// New opens the view: it takes a first snapshot and indexes the store's chain.
func New(ctx context.Context, o Options) (*View, error) {
	if o.StoreDir == "" {
		o.StoreDir = handover.DefaultStoreDir
	}
	if o.IndexEvery <= 0 {
		o.IndexEvery = DefaultIndexEvery
	}
	v := &View{o: o, cur: &chain{}, sr: handover.NewSnapshotter(handover.SnapshotOptions{Paths: o.Paths, StoreDir: o.StoreDir, Busy: o.Busy})}
	if _, err := v.snapshot(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

func (v *View) logf(format string, args ...any) {
	if v.o.Logf != nil {
		v.o.Logf(format, args...)
	}
}

func (v *View) current() *chain {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.cur
}

// Banks are the banks the view has files for: the store's banks (its header), or without a
// store the running kernel's; SHA1 always (the kernel has SHA1 lists without a SHA1 bank).
func (v *View) Banks() []serialize.Bank { return v.current().banks }

// Formats lists every file format of the view.
func (v *View) Formats() []Format {
	var out []Format
	for _, b := range v.Banks() {
		out = append(out, Format{ASCII, b}, Format{Binary, b})
	}
	return out
}

// snap is one snapshot with the chain it was indexed into.
type snap struct {
	*handover.Snapshot
	c      *chain
	stored uint64 // records of the snapshot's store
	mu     sync.Mutex
	tail   map[Format][]int64
}

// tailOffsets are the offsets of the live records in format f, relative to the stored
// part's end, with one more entry for the end.
func (s *snap) tailOffsets(f Format, r *renderer) ([]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.tail[f]; ok {
		return o, nil
	}
	o := make([]int64, 1, len(s.Live)+1)
	var buf []byte
	r.setScheme(s.Scheme)
	for i := range s.Live {
		var err error
		if buf, err = r.append(buf[:0], &s.Live[i]); err != nil {
			return nil, fmt.Errorf("render live record %d: %w", s.stored+uint64(i), err)
		}
		o = append(o, o[len(o)-1]+int64(len(buf)))
	}
	if s.tail == nil {
		s.tail = map[Format][]int64{}
	}
	s.tail[f] = o
	return o, nil
}

// snapshot returns a snapshot begun after the call: readers that arrive while one is
// being taken wait for the next and share it, and when readers queued for the last one the
// next begins no sooner than the last took after it ended. So the kernel's list files are
// read by one snapshot at a time, and open at most half the time however many readers
// poll: a drain's open (7.2: one writer or many readers) meets EBUSY and retries for no
// longer than that.
func (v *View) snapshot(ctx context.Context) (*snap, error) {
	arrive := time.Now()
	v.fmu.Lock()
	for {
		if f := v.inflight; f != nil {
			v.waiters++
			v.fmu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if !f.start.Before(arrive) {
				return f.sn, f.err
			}
			v.fmu.Lock()
			continue
		}
		if wait := time.Until(v.lastEnd.Add(min(v.lastTook, 50*time.Millisecond))); wait > 0 && v.waiters > 0 {
			v.fmu.Unlock()
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			v.fmu.Lock()
			continue
		}
		break
	}
	f := &flight{done: make(chan struct{}), start: time.Now()}
	v.inflight = f
	v.waiters = 0
	v.fmu.Unlock()
	// The flight serves other readers too: the first one's cancellation must not end it.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	f.sn, f.err = v.takeSnapshot(sctx)
	cancel()
	v.fmu.Lock()
	v.inflight = nil
	v.lastEnd = time.Now()
	v.lastTook = v.lastEnd.Sub(f.start)
	close(f.done)
	v.fmu.Unlock()
	return f.sn, f.err
}

// takeSnapshot reads the store and the kernel's unstored records, and extends (or restarts)
// the index to the snapshot's store.
func (v *View) takeSnapshot(ctx context.Context) (*snap, error) {
	sn, err := v.sr.Read(ctx)
	if err != nil {
		return nil, err
	}
	c, err := v.refresh(sn)
	if err != nil {
		return nil, err
	}
	return &snap{Snapshot: sn, c: c, stored: sn.Store.Records()}, nil
}

func chainID(s *handover.Store) string {
	h := s.Header()
	if h == nil {
		return ""
	}
	return fmt.Sprintf("%s/%d", h.StoreID, h.TPM.ResetCount)
}

// refresh brings the index to the snapshot's store: new segments are indexed; a store of
// another power cycle, or one whose chain is not an extension of the indexed one, starts a
// new chain (readers of the old one get ErrStale).
func (v *View) refresh(sn *handover.Snapshot) (*chain, error) {
	v.build.Lock()
	defer v.build.Unlock()
	cur := v.current()
	s := sn.Store
	id := chainID(s)
	segs := s.ChainSegments()
	restart := ""
	switch {
	case cur.id != "" && id != cur.id:
		restart = "the store belongs to another TPM power cycle (cold boot)"
	case len(segs) < len(cur.segs):
		restart = fmt.Sprintf("the store's chain has %d segments, fewer than the %d indexed", len(segs), len(cur.segs))
	default:
		for i := range cur.segs {
			if segs[i].Number != cur.segs[i].Number || segs[i].SHA256 != cur.segs[i].SHA256 {
				restart = fmt.Sprintf("segment %d changed", cur.segs[i].Number)
				break
			}
		}
	}
	nc := *cur
	if restart != "" {
		v.logf("view: new chain: %s", restart)
		nc = chain{gen: cur.gen + 1}
	}
	nc.id = id
	nc.store = s
	nc.banks = banksOf(sn, v.o.Paths)
	if len(segs) == len(nc.segs) && restart == "" && id == cur.id && slices.EqualFunc(nc.banks, cur.banks, func(a, b serialize.Bank) bool { return a.Name == b.Name }) {
		return cur, nil
	}
	for i := len(nc.segs); i < len(segs); i++ {
		if err := v.index(&nc, s, segs[i]); err != nil {
			return nil, err
		}
	}
	v.mu.Lock()
	v.cur = &nc
	v.mu.Unlock()
	return &nc, nil
}

func banksOf(sn *handover.Snapshot, p handover.Paths) []serialize.Bank {
	out := []serialize.Bank{serialize.SHA1}
	var names []string
	if h := sn.Store.Header(); h != nil {
		names = h.Banks
	} else if k, err := handover.ProbeKernel(p); err == nil {
		names = k.Banks // the per-bank lists of the running kernel (6.10+)
	}
	for _, n := range names {
		b, err := serialize.ParseBank(n)
		if err != nil || b.Name == "sha1" {
			continue
		}
		if _, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: []serialize.Bank{b}}); err != nil {
			continue // a bank whose digests cannot be computed (SM3)
		}
		out = append(out, b)
	}
	sort.Slice(out[1:], func(i, j int) bool { return out[1+i].Name < out[1+j].Name })
	return out
}

// index appends one segment to c: its records are read once (with the store's checks of
// size, count and SHA-256) to place checkpoints and sum the sizes.
func (v *View) index(c *chain, s *handover.Store, sg handover.Segment) error {
	if sg.FirstSeq != c.stored {
		return fmt.Errorf("view: segment %d starts at record %d, the chain has %d", sg.Number, sg.FirstSeq, c.stored)
	}
	cr := s.SegmentReader(sg)
	defer cr.Close()
	sc, err := segmentScheme(&sg)
	if err != nil {
		return err
	}
	ar := newRenderer(Format{ASCII, serialize.SHA1})
	ar.setScheme(sc)
	si := len(c.segs)
	c.segs = append(c.segs, sg)
	foff := int64(serialize.KexecHeaderSize)
	var buf []byte
	var n uint64
	for {
		rec, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("view: index: %w", err)
		}
		if n%uint64(v.o.IndexEvery) == 0 {
			c.cps = append(c.cps, checkpoint{seq: c.stored, seg: si, foff: foff, bin: c.bin, asc: c.asc})
		}
		if buf, err = ar.append(buf[:0], rec); err != nil {
			return fmt.Errorf("view: index: segment %d record %d: %w", sg.Number, c.stored, err)
		}
		sz := int64(serialize.RecordSize(rec, serialize.SHA1Size))
		c.bin += sz
		c.asc += int64(len(buf))
		foff += sz
		c.stored++
		n++
	}
	return nil
}

// Count is the number of records of the view now (runtime_measurements_count).
func (v *View) Count(ctx context.Context) (uint64, error) {
	s, err := v.snapshot(ctx)
	if err != nil {
		return 0, err
	}
	return s.stored + uint64(len(s.Live)), nil
}

// Gen is the current chain generation (+1 at every cold boot seen).
func (v *View) Gen() int { return v.current().gen }
