package handover

import (
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// BenchmarkDrain drains IMAKEXEC_BENCH_RECORDS (default 1,000,000) records through the
// FUSE kernel model (read, persist, fsync, read back, delete) per backend, and reports the
// store size relative to the kernel's SHA1 binary list. The drain's own memory is measured
// by BenchmarkDrainCLI (this process also holds the kernel model).
func BenchmarkDrain(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("IMAKEXEC_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	for _, backend := range []Backend{BackendStaged, BackendDeleteN} {
		b.Run(string(backend), func(b *testing.B) {
			e := newKenv(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
			var listBytes, storeBytes int64
			var peak atomic.Uint64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := e.k.Synthetic(n); err != nil {
					b.Fatal(err)
				}
				listBytes = 0
				for _, r := range e.k.List() {
					listBytes += int64(serialize.RecordSize(&r, serialize.SHA1Size))
				}
				before := mustStoreB(b, e.store).Bytes()
				runtime.GC()
				stop := make(chan struct{})
				go func() {
					var ms runtime.MemStats
					for {
						select {
						case <-stop:
							return
						case <-time.After(20 * time.Millisecond):
						}
						runtime.ReadMemStats(&ms)
						if ms.HeapInuse > peak.Load() {
							peak.Store(ms.HeapInuse)
						}
					}
				}()
				b.StartTimer()
				r, err := e.drain(backend, nil)
				b.StopTimer()
				close(stop)
				if err != nil {
					b.Fatal(err)
				}
				if r.Stored < uint64(n) {
					b.Fatalf("stored %d of %d", r.Stored, n)
				}
				storeBytes = mustStoreB(b, e.store).Bytes() - before
				b.StartTimer()
			}
			b.ReportMetric(float64(n), "records/op")
			b.ReportMetric(float64(storeBytes)/float64(listBytes), "store/list")
		})
	}
}

func mustStoreB(b *testing.B, dir string) *Store {
	s, err := OpenStore(dir)
	if err != nil {
		b.Fatal(err)
	}
	return s
}
