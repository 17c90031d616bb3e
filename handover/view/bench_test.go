package view

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// benchRecords is IMAKEXEC_BENCH_RECORDS, default 1,000,000.
func benchRecords() int {
	if v, err := strconv.Atoi(os.Getenv("IMAKEXEC_BENCH_RECORDS")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

// benchEnv is a model kernel whose n synthetic records are all in the store (one rejoin),
// the view mounted, and the same SHA1 ASCII list in a plain file.
func benchEnv(b *testing.B, n int) (*env, string) {
	b.Helper()
	e := newEnv(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	if _, err := e.k.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	e.rejoin(nil)
	e.serve()
	plain := filepath.Join(b.TempDir(), "ascii_runtime_measurements")
	if err := os.WriteFile(plain, e.export(Format{ASCII, serialize.SHA1}), 0o600); err != nil {
		b.Fatal(err)
	}
	return e, plain
}

// readAll reads name to the end with cat's buffer size (128 KiB) and returns the bytes read.
func readAll(b *testing.B, name string) int64 {
	f, err := os.Open(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 128<<10)
	var n int64
	for {
		m, err := f.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkView reads the view of a chain of IMAKEXEC_BENCH_RECORDS records (default
// 1,000,000, all stored) through FUSE, against the same bytes from a plain file (page
// cache): whole-list reads with 128 KiB reads (cat's size) and with cat itself, and a read
// of the last 100 records at their offset.
func BenchmarkView(b *testing.B) {
	n := benchRecords()
	e, plain := benchEnv(b, n)
	view := filepath.Join(e.mnt, "ascii_runtime_measurements")
	size := readAll(b, plain)
	if got := readAll(b, view); got != size {
		b.Fatalf("view has %d bytes, the plain file %d", got, size)
	}
	rates := map[string]float64{}
	for _, c := range []struct{ name, path string }{{"read/plain", plain}, {"read/view", view}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(size)
			start := time.Now()
			for range b.N {
				readAll(b, c.path)
			}
			rates[c.name] = float64(size) * float64(b.N) / time.Since(start).Seconds()
			if c.name == "read/view" && rates["read/plain"] > 0 {
				b.ReportMetric(rates[c.name]/rates["read/plain"], "of-plain")
			}
		})
	}
	for _, c := range []struct{ name, path string }{{"cat/plain", plain}, {"cat/view", view}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(size)
			start := time.Now()
			for range b.N {
				cmd := exec.Command("cat", c.path) // stdout: /dev/null
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
			}
			rates[c.name] = float64(size) * float64(b.N) / time.Since(start).Seconds()
			if c.name == "cat/view" && rates["cat/plain"] > 0 {
				b.ReportMetric(rates[c.name]/rates["cat/plain"], "of-plain")
			}
		})
	}
	// The offset of record n-100, as an agent would have cached it.
	pb, _ := os.ReadFile(plain)
	off := len(pb)
	for range 100 {
		off = bytes.LastIndexByte(pb[:off-1], '\n') + 1
	}
	tail := pb[off:]
	b.Run("last100", func(b *testing.B) {
		f, err := os.Open(view)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 128<<10)
		for range b.N {
			m, err := f.ReadAt(buf, int64(off))
			if err != io.EOF || !bytes.Equal(buf[:m], tail) {
				b.Fatalf("last 100 records: %d bytes, %v", m, err)
			}
		}
	})
	b.Run("last100/fresh-open", func(b *testing.B) {
		for range b.N {
			f, err := os.Open(view)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Seek(int64(off), io.SeekStart); err != nil {
				b.Fatal(err)
			}
			got, err := io.ReadAll(f)
			f.Close()
			if err != nil || !bytes.Equal(got, tail) {
				b.Fatalf("last 100 records: %d bytes, %v", len(got), err)
			}
		}
	})
}

// BenchmarkServeCLI runs `imakexec serve` as its own process on a chain of
// IMAKEXEC_BENCH_RECORDS records, reads every file of the view whole with cat, and reports
// the server's peak RSS (VmHWM) and its start-up time (indexing the chain until READY=1).
func BenchmarkServeCLI(b *testing.B) {
	n := benchRecords()
	e := newEnv(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	if _, err := e.k.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	e.rejoin(nil)
	bin := filepath.Join(b.TempDir(), "imakexec")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/imakexec").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var peak, startup float64
	for range b.N {
		mnt := filepath.Join(b.TempDir(), "log")
		sockDir, _ := os.MkdirTemp("", "nfy")
		sock := filepath.Join(sockDir, "n")
		l, err := netListen(sock)
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, "--securityfs", e.paths.Securityfs, "serve", "--mount", mnt, "--store", e.store, "--proc", e.paths.Proc)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 256)
		l.SetReadDeadline(time.Now().Add(5 * time.Minute))
		if m, err := l.Read(buf); err != nil || !strings.HasPrefix(string(buf[:m]), "READY=1") {
			cmd.Process.Kill()
			b.Fatalf("no READY=1: %v %q\n%s", err, buf[:m], stderr.String())
		}
		startup = time.Since(start).Seconds()
		for _, name := range []string{"ascii_runtime_measurements", "binary_runtime_measurements", "ascii_runtime_measurements_sha256", "binary_runtime_measurements_sha512"} {
			if out, err := exec.Command("cat", filepath.Join(mnt, name)).Output(); err != nil || len(out) == 0 {
				b.Fatalf("cat %s: %v", name, err)
			}
		}
		peak = max(peak, vmHWM(b, cmd.Process.Pid))
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("serve: %v\n%s", err, stderr.String())
		}
		l.Close()
		os.RemoveAll(sockDir)
	}
	b.ReportMetric(peak, "peak-RSS-MiB")
	b.ReportMetric(startup, "startup-s")
	b.ReportMetric(float64(n), "records")
}

func vmHWM(b *testing.B, pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmHWM")
	return 0
}

func netListen(path string) (*net.UnixConn, error) {
	return net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
}
