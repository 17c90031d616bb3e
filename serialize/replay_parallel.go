package serialize

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// Parallel replay: the PCR chain of one bank is sequential, but banks are independent.
// The caller's goroutine copies records into batches; one goroutine per bank hashes and
// extends them. Memory stays bounded by the batches in flight, whatever the list size.

const (
	batchRecords  = 2048
	batchArena    = 1 << 20 // a batch is dispatched once its records hold this many bytes
	batchesInFlow = 4
)

type batch struct {
	recs  []Record
	spans []span
	arena []byte
	pend  atomic.Int32
	first int // index of recs[0] in the whole replay
}

// span locates a record's data and digest in the arena.
type span struct{ d, dg [2]int }

func (b *batch) reset() {
	b.recs = b.recs[:0]
	b.spans = b.spans[:0]
	b.arena = b.arena[:0]
}

// add copies rec into b; it reports whether b is full.
func (b *batch) add(rec *Record) bool {
	var sp span
	sp.d = [2]int{len(b.arena), len(b.arena) + len(rec.Data)}
	b.arena = append(b.arena, rec.Data...)
	sp.dg = [2]int{len(b.arena), len(b.arena) + len(rec.Digest)}
	b.arena = append(b.arena, rec.Digest...)
	b.spans = append(b.spans, sp)
	b.recs = append(b.recs, Record{PCR: rec.PCR, Template: rec.Template})
	return len(b.recs) >= batchRecords || len(b.arena) > batchArena
}

// fix points the records into the arena once it stopped growing.
func (b *batch) fix() {
	for i, sp := range b.spans {
		b.recs[i].Data = b.arena[sp.d[0]:sp.d[1]:sp.d[1]]
		if sp.dg[1] > sp.dg[0] {
			b.recs[i].Digest = b.arena[sp.dg[0]:sp.dg[1]:sp.dg[1]]
		} else {
			b.recs[i].Digest = nil
		}
	}
}

// ParallelAdder adds records to a Replayer with one goroutine per bank, so that a caller
// which reads and writes records (a drain: read the kernel list, write the store) overlaps
// that work with the hashing. Add copies each record into a batch (records from readers are
// only valid until their next read); full batches go to the bank goroutines. At most a few
// batches are in flight, so memory does not grow with the number of records.
//
// The result is the same as Replayer.Add record by record. While the adder is open the
// Replayer must not be used; Close waits for the bank goroutines and hands it back. When
// parallel hashing brings nothing (one bank, one CPU, a prefix target set) the adder calls
// Replayer.Add directly.
type ParallelAdder struct {
	r      *Replayer
	serial bool
	closed bool
	err    error // result of Close

	free   chan *batch
	work   []chan *batch
	wg     sync.WaitGroup
	errs   []error // per bank, written by its goroutine, read after wg.Wait
	failed atomic.Bool
	cur    *batch
}

// Parallel returns an adder feeding r; Close it before using r again.
func (r *Replayer) Parallel() *ParallelAdder {
	a := &ParallelAdder{r: r}
	if !r.useParallel() {
		a.serial = true
		return a
	}
	nb := len(r.banks)
	a.free = make(chan *batch, batchesInFlow)
	for i := 0; i < batchesInFlow; i++ {
		a.free <- &batch{recs: make([]Record, 0, batchRecords), spans: make([]span, 0, batchRecords)}
	}
	a.work = make([]chan *batch, nb)
	a.errs = make([]error, nb)
	for bi := range r.banks {
		a.work[bi] = make(chan *batch, batchesInFlow)
		a.wg.Add(1)
		go func(bi int) {
			defer a.wg.Done()
			w := bankWorker{r: r, bi: bi, dg: Digester{Order: r.dg.Order, Scheme: r.dg.Scheme}}
			for b := range a.work[bi] {
				if a.errs[bi] == nil {
					if a.errs[bi] = w.run(b); a.errs[bi] != nil {
						a.failed.Store(true)
					}
				}
				if b.pend.Add(-1) == 0 {
					a.free <- b
				}
			}
		}(bi)
	}
	return a
}

// Add adds one record (copied; rec may be reused by the caller). An error of an earlier
// record may surface here or only at Close; after an error the adder is closed and every
// later call returns that error.
func (a *ParallelAdder) Add(rec *Record) error {
	if a.closed {
		if a.err == nil {
			return errors.New("serialize: Add on a closed ParallelAdder")
		}
		return a.err
	}
	if a.serial {
		if err := a.r.Add(rec); err != nil {
			a.closed, a.err = true, err
			return err
		}
		return nil
	}
	if rec.PCR >= MaxPCR {
		err := fmt.Errorf("record %d: %w: pcr %d", a.r.n+a.pending(), ErrFormat, rec.PCR)
		a.Close()
		if a.err == nil {
			a.err = err
		}
		return a.err
	}
	if a.failed.Load() {
		return a.Close()
	}
	if a.cur == nil {
		a.cur = <-a.free
		a.cur.reset()
	}
	if a.cur.add(rec) {
		a.dispatch()
	}
	return nil
}

func (a *ParallelAdder) pending() int {
	if a.cur == nil {
		return 0
	}
	return len(a.cur.recs)
}

// dispatch hands the current batch to every bank goroutine and does the serial
// bookkeeping (counts, last record per PCR).
func (a *ParallelAdder) dispatch() {
	b, r := a.cur, a.r
	a.cur = nil
	if len(b.recs) == 0 {
		a.free <- b
		return
	}
	b.fix()
	b.first = r.n
	b.pend.Store(int32(len(a.work)))
	for _, c := range a.work {
		c <- b
	}
	for i := range b.recs {
		if b.recs[i].IsViolation() {
			r.viol++
		}
		r.last[b.recs[i].PCR] = r.n + i
	}
	r.n += len(b.recs)
}

// Close replays what is still batched, waits for the bank goroutines and returns the
// first error (in bank order) of any record added. It may be called more than once.
func (a *ParallelAdder) Close() error {
	if a.closed {
		return a.err
	}
	a.closed = true
	if a.serial {
		return nil
	}
	if a.cur != nil {
		a.dispatch()
	}
	for _, c := range a.work {
		close(c)
	}
	a.wg.Wait()
	for _, err := range a.errs {
		if err != nil {
			a.err = err
			break
		}
	}
	return a.err
}

// addAllParallel is AddAll with one goroutine per bank.
func (r *Replayer) addAllParallel(src Source) error {
	a := r.Parallel()
	for {
		rec, err := src.Next()
		if err != nil {
			cerr := a.Close()
			if cerr != nil {
				return cerr
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := a.Add(rec); err != nil {
			return err
		}
	}
}

type bankWorker struct {
	r   *Replayer
	bi  int
	dg  Digester
	ext [64]byte
	buf [128]byte
	d   [64]byte
}

func (w *bankWorker) run(b *batch) error {
	r := w.r
	bank := &r.banks[w.bi]
	check := r.check != nil && r.checkI == w.bi && w.dg.Scheme == SchemeHash
	// The first worker also checks stored digests of a bank that is not replayed.
	checkOther := r.check != nil && r.checkI < 0 && w.bi == 0
	for i := range b.recs {
		rec := &b.recs[i]
		if err := w.dg.ExtendValue(w.ext[:], rec, bank); err != nil {
			return fmt.Errorf("record %d: %w", b.first+i, err)
		}
		viol := rec.IsViolation()
		if check && !viol && len(rec.Digest) == bank.Size && string(rec.Digest) != string(w.ext[:bank.Size]) {
			return fmt.Errorf("record %d (%s, pcr %d): %w: %s digest %x, data hashes to %x",
				b.first+i, rec.Template, rec.PCR, ErrDigestMismatch, bank.Name, rec.Digest, w.ext[:bank.Size])
		}
		if checkOther && !viol && len(rec.Digest) == r.check.Size {
			if err := w.dg.TemplateDigest(w.d[:], rec, r.check); err != nil {
				return fmt.Errorf("record %d: %w", b.first+i, err)
			}
			if string(rec.Digest) != string(w.d[:r.check.Size]) {
				return fmt.Errorf("record %d (%s, pcr %d): %w: %s digest %x, data hashes to %x",
					b.first+i, rec.Template, rec.PCR, ErrDigestMismatch, r.check.Name, rec.Digest, w.d[:r.check.Size])
			}
		}
		v := r.vals[w.bi*MaxPCR+int(rec.PCR)]
		copy(w.buf[:], v)
		copy(w.buf[bank.Size:], w.ext[:bank.Size])
		bank.sum(v, w.buf[:2*bank.Size])
	}
	return nil
}

// useParallel decides whether AddAll spreads banks over goroutines.
func (r *Replayer) useParallel() bool {
	if len(r.banks) < 2 || runtime.GOMAXPROCS(0) < 2 || r.target != nil {
		return false
	}
	for _, b := range r.banks {
		if b.hash == 0 {
			return false // the serial path reports the unsupported bank
		}
	}
	return true
}
