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
// One goroutine parses records into batches; one goroutine per bank hashes and extends
// them. Memory stays bounded by the batches in flight, whatever the list size.

const (
	batchRecords  = 2048
	batchesInFlow = 4
)

type batch struct {
	recs  []Record
	arena []byte
	pend  atomic.Int32
	first int // index of recs[0] in the whole replay
}

// fill copies up to batchRecords records from src into b. It returns io.EOF when src ended
// (b may still hold records).
func (b *batch) fill(src Source) error {
	b.recs = b.recs[:0]
	b.arena = b.arena[:0]
	var spans [batchRecords]span
	for len(b.recs) < batchRecords {
		rec, err := src.Next()
		if err != nil {
			b.fix(spans[:len(b.recs)])
			return err
		}
		var sp span
		sp.d = [2]int{len(b.arena), len(b.arena) + len(rec.Data)}
		b.arena = append(b.arena, rec.Data...)
		sp.dg = [2]int{len(b.arena), len(b.arena) + len(rec.Digest)}
		b.arena = append(b.arena, rec.Digest...)
		spans[len(b.recs)] = sp
		b.recs = append(b.recs, Record{PCR: rec.PCR, Template: rec.Template})
		if len(b.arena) > 8<<20 {
			break
		}
	}
	b.fix(spans[:len(b.recs)])
	return nil
}

// span locates a record's data and digest in the arena.
type span struct{ d, dg [2]int }

// fix points the records into the arena once it stopped growing.
func (b *batch) fix(spans []span) {
	for i, sp := range spans {
		b.recs[i].Data = b.arena[sp.d[0]:sp.d[1]:sp.d[1]]
		if sp.dg[1] > sp.dg[0] {
			b.recs[i].Digest = b.arena[sp.dg[0]:sp.dg[1]:sp.dg[1]]
		} else {
			b.recs[i].Digest = nil
		}
	}
}

// addAllParallel is AddAll with one goroutine per bank.
func (r *Replayer) addAllParallel(src Source) error {
	nb := len(r.banks)
	free := make(chan *batch, batchesInFlow)
	for i := 0; i < batchesInFlow; i++ {
		free <- &batch{recs: make([]Record, 0, batchRecords)}
	}
	work := make([]chan *batch, nb)
	errs := make([]error, nb)
	var wg sync.WaitGroup
	for bi := range r.banks {
		work[bi] = make(chan *batch, batchesInFlow)
		wg.Add(1)
		go func(bi int) {
			defer wg.Done()
			w := bankWorker{r: r, bi: bi, dg: Digester{Order: r.dg.Order, Scheme: r.dg.Scheme}}
			for b := range work[bi] {
				if errs[bi] == nil {
					errs[bi] = w.run(b)
				}
				if b.pend.Add(-1) == 0 {
					free <- b
				}
			}
		}(bi)
	}
	var srcErr error
	n := r.n
	for srcErr == nil {
		b := <-free
		srcErr = b.fill(src)
		if len(b.recs) == 0 {
			free <- b
			break
		}
		b.first = n
		// Serial bookkeeping: counts, last record per PCR, PCR range.
		for i := range b.recs {
			rec := &b.recs[i]
			if rec.PCR >= MaxPCR {
				srcErr = fmt.Errorf("record %d: %w: pcr %d", n+i, ErrFormat, rec.PCR)
				b.recs = b.recs[:i]
				break
			}
		}
		b.pend.Store(int32(nb))
		for bi := range work {
			work[bi] <- b
		}
		for i := range b.recs {
			if b.recs[i].IsViolation() {
				r.viol++
			}
			r.last[b.recs[i].PCR] = n + i
		}
		n += len(b.recs)
	}
	for _, c := range work {
		close(c)
	}
	wg.Wait()
	r.n = n
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if errors.Is(srcErr, io.EOF) {
		return nil
	}
	return srcErr
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
