package main

import (
	"bytes"
	"context"
	"encoding/json"
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
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// BenchmarkVerifyCLI measures `imakexec verify`'s own memory and time on a chain of
// IMAKEXEC_BENCH_RECORDS (default 1,000,000) stored records followed by as many live
// records the kernel holds and the store does not: verify as a subprocess (the kernel model
// and its FUSE server stay in the test process), its peak RSS (VmHWM, sampled every 20 ms).
// The live list is streamed, so the peak does not grow with it.
func BenchmarkVerifyCLI(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("IMAKEXEC_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	bin := imakexecBinaryTB(b)
	env := kmodeltest.Mount(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	store := filepath.Join(b.TempDir(), "store")
	if _, err := env.Kernel.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	if _, err := handover.Drain(context.Background(), handover.DrainOptions{Paths: handover.Paths{Securityfs: env.Securityfs, Proc: env.Proc}, StoreDir: store, TPM: env.TPM}); err != nil {
		b.Fatal(err)
	}
	if _, err := env.Kernel.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	var rss int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command(bin, "--securityfs", env.Securityfs, "--tpm", "unix:"+env.TPMSocket, "verify", "--proc", env.Proc, "--store", store, "--json")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		hwm, err := peakRSS(cmd)
		if err != nil {
			b.Fatalf("verify: %v\n%s", err, out.Bytes())
		}
		var v struct {
			Verified bool
			Records  int
		}
		if err := json.Unmarshal(out.Bytes(), &v); err != nil || !v.Verified || v.Records != 2*n+1 {
			b.Fatalf("verify did not prove the %d records: %s", 2*n+1, out.Bytes())
		}
		rss = max(rss, hwm)
	}
	b.ReportMetric(float64(2*n+1)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
}

// peakRSS runs cmd and returns its peak resident set (VmHWM, kB) sampled from /proc: the
// ru_maxrss of a child counts the parent's image it was forked from before exec.
func peakRSS(cmd *exec.Cmd) (int64, error) {
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var hwm int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(st), "\n") {
				if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
					kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
					hwm = max(hwm, kb)
				}
				if v, ok := strings.CutPrefix(l, "State:"); ok && strings.Contains(v, "Z") {
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	err := cmd.Wait()
	<-done
	return hwm, err
}

func imakexecBinaryTB(tb testing.TB) string {
	tb.Helper()
	if builtBinary != "" {
		return builtBinary
	}
	dir, err := os.MkdirTemp("", "imakexec-bin")
	if err != nil {
		tb.Fatal(err)
	}
	out := filepath.Join(dir, "imakexec")
	if b, err := exec.Command("go", "build", "-o", out, ".").CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, b)
	}
	builtBinary = out
	return out
}
