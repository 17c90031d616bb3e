package handover

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
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

// BenchmarkDrainCLI measures the drain's own memory: `imakexec drain` as a subprocess
// (the kernel model and FUSE server stay in the test process), its peak RSS (VmHWM,
// sampled every 50 ms) per list size.
func BenchmarkDrainCLI(b *testing.B) {
	bin := b.TempDir() + "/imakexec"
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/imakexec").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			e := newKenv(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
			sock := e.sock
			var rss int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := e.k.Synthetic(n); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				cmd := exec.Command(bin, "--securityfs", e.paths.Securityfs, "--tpm", "unix:"+sock, "drain", "--proc", e.paths.Proc, "--store", e.store, "--backend", string(BackendStaged))
				cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
				var ob bytes.Buffer
				cmd.Stdout, cmd.Stderr = &ob, &ob
				if err := cmd.Start(); err != nil {
					b.Fatal(err)
				}
				var last string
				var hwm int64
				done := make(chan struct{})
				go func() {
					defer close(done)
					for cmd.ProcessState == nil {
						st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
						if err != nil {
							return
						}
						for _, l := range strings.Split(string(st), "\n") {
							if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
								kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
								hwm = max(hwm, kb)
								last += l + " "
							}
						}
						last += "\n"
						time.Sleep(50 * time.Millisecond)
					}
				}()
				err := cmd.Wait()
				<-done
				out := ob.Bytes()
				if os.Getenv("IMAKEXEC_BENCH_GCTRACE") != "" {
					b.Logf("%s", last)
				}
				if err != nil {
					b.Fatalf("drain: %v %s", err, out)
				}
				if os.Getenv("IMAKEXEC_BENCH_GCTRACE") != "" {
					b.Logf("%s", out)
				}
				// ru_maxrss of a child counts the parent's image it was cloned from before
				// exec; VmHWM sampled from /proc is the drain's own peak.
				rss = hwm
			}
			b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
		})
	}
}
