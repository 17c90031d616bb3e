package view

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

type sample struct {
	f    Format
	off  int64
	n    int
	want int // bytes asked
	sum  [32]byte
}

// Eight readers read at random offsets and lengths (each with its own descriptor, two of
// them sharing theirs between two goroutines) while records are measured and drained
// (staged deletion, delete-n) on the 7.2 model. Afterwards every byte any read returned
// must equal the same bytes of the final log as handover.Export writes it, so no read
// returned a record out of order, twice, or torn; and a read that came back short ended
// on a record boundary (the end of the log at that moment). Every drain succeeds.
func TestConcurrentReadersWhileDraining(t *testing.T) {
	e := newEnv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(200)
	e.rejoin(nil)
	e.serve()
	formats := []Format{{ASCII, serialize.SHA1}, {Binary, serialize.SHA1}, {ASCII, serialize.SHA256}, {Binary, serialize.SHA256}}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	var samples []sample
	var reads, shorts atomic.Int64
	errc := make(chan error, 16)
	reader := func(id int, f *os.File, format Format) {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(id), 7))
		size := int64(1 << 16)
		buf := make([]byte, 256<<10)
		for !stop.Load() {
			want := 1 + rng.IntN(len(buf))
			if rng.IntN(4) == 0 {
				want = 1 + rng.IntN(300) // a few records, or part of one
			}
			off := rng.Int64N(size + size/8)
			if rng.IntN(3) == 0 {
				off = max(0, size-rng.Int64N(8192)) // near the end as last seen: live records
			}
			n, err := f.ReadAt(buf[:want], off)
			if err != nil && !errors.Is(err, io.EOF) {
				errc <- err
				return
			}
			reads.Add(1)
			size = max(size, off+int64(n))
			if n < want {
				shorts.Add(1)
			}
			mu.Lock()
			samples = append(samples, sample{f: format, off: off, n: n, want: want, sum: sha256.Sum256(buf[:n])})
			mu.Unlock()
		}
	}
	defer func() { stop.Store(true); wg.Wait() }() // before the view is unmounted, also on t.Fatal
	for i := range 8 {
		format := formats[i%len(formats)]
		f, err := os.Open(filepath.Join(e.mnt, format.Name()))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		wg.Add(1)
		go reader(i, f, format)
		if i < 2 {
			wg.Add(1)
			go reader(100+i, f, format)
		}
	}
	drains := 0
	// Until enough happened (reads at the end, while drains go on), at most 60 s: the
	// machine may be loaded.
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && (drains < 10 || reads.Load() < 200 || shorts.Load() < 20) {
		e.work(30 + drains%17)
		backend := handover.BackendStaged
		if drains%3 == 2 {
			backend = handover.BackendDeleteN
		}
		if r := e.drain(backend); r.Stored == 0 {
			t.Fatalf("drain %d stored nothing", drains)
		}
		drains++
	}
	e.work(11) // some records stay live
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatalf("read: %v", err)
	}

	final := map[Format][]byte{}
	bounds := map[Format]map[int64]bool{}
	for _, f := range formats {
		final[f] = e.export(f)
		if got := e.readView(f.Name()); !bytes.Equal(got, final[f]) {
			t.Fatalf("%s: the whole view differs from the export at byte %d", f.Name(), firstDiff(got, final[f]))
		}
		bounds[f] = recordBounds(t, f, final[f])
	}
	for _, s := range samples {
		ref := final[s.f]
		if s.n == 0 && s.off >= int64(len(ref)) {
			continue // past the end then and now
		}
		end := min(s.off+int64(s.n), int64(len(ref)))
		if s.off > int64(len(ref)) || end-s.off != int64(s.n) {
			t.Fatalf("%s: a read at %d returned %d bytes, past the final log's %d", s.f.Name(), s.off, s.n, len(ref))
		}
		if sha256.Sum256(ref[s.off:end]) != s.sum {
			t.Fatalf("%s: the %d bytes read at %d differ from the final log there", s.f.Name(), s.n, s.off)
		}
		if s.n < s.want && s.n > 0 && !bounds[s.f][end] {
			t.Fatalf("%s: a short read at %d ended at %d, inside a record", s.f.Name(), s.off, end)
		}
	}
	t.Logf("%d drains, %d reads (%d short) by 10 goroutines, %d records", drains, reads.Load(), shorts.Load(), bytes.Count(final[formats[0]], []byte("\n")))
	if drains < 10 || reads.Load() < 200 || shorts.Load() < 20 {
		t.Fatalf("too little happened: %d drains, %d reads, %d at the end", drains, reads.Load(), shorts.Load())
	}
}

// recordBounds are the offsets where records of the list start or end.
func recordBounds(t *testing.T, f Format, b []byte) map[int64]bool {
	out := map[int64]bool{0: true}
	if f.Kind == ASCII {
		for i, c := range b {
			if c == '\n' {
				out[int64(i+1)] = true
			}
		}
		return out
	}
	br := serialize.NewBinaryReader(bytes.NewReader(b), handover.StoreOrder, f.Bank.Size)
	for {
		_, err := br.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", f.Name(), err)
		}
		out[br.Offset()] = true
	}
}
