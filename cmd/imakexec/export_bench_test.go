package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
)

// vmHWM samples /proc/PID/status VmHWM (kB) every 20 ms until done is closed.
func vmHWM(pid int, done <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var hwm int64
		defer func() { out <- hwm }()
		for {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
				for _, l := range strings.Split(string(b), "\n") {
					if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
						kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
						hwm = max(hwm, kb)
					}
				}
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return out
}

// BenchmarkExportCLI measures `imakexec export` (binary, -o FILE) of a chain of
// IMAKEXEC_BENCH_RECORDS (default 1,000,000) stored records followed by as many live ones
// the kernel model still holds: its time and peak RSS (VmHWM of the subprocess; the model
// and its FUSE server stay in the test process).
func BenchmarkExportCLI(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("IMAKEXEC_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	bin := imakexecBinary(b)
	m := newModelCLI(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	if _, err := m.env.Kernel.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	if _, err := handover.Drain(context.Background(), handover.DrainOptions{Paths: handover.Paths{Securityfs: m.env.Securityfs, Proc: m.env.Proc}, StoreDir: m.store, TPM: m.env.TPM, Backend: handover.BackendSnapshot}); err != nil {
		b.Fatal(err)
	}
	if _, err := m.env.Kernel.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), "log.bin")
	var rss int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(bin, m.args("export", "--format", "binary", "-o", out)...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		hwm := vmHWM(cmd.Process.Pid, done)
		err := cmd.Wait()
		close(done)
		rss = max(rss, <-hwm)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	fi, _ := os.Stat(out)
	b.ReportMetric(float64(2*n), "records/op")
	b.ReportMetric(float64(fi.Size())/(1<<20), "out-MiB")
	b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
}
