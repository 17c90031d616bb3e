package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
)

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
		hwm, err := peakRSS(cmd)
		rss = max(rss, hwm)
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
