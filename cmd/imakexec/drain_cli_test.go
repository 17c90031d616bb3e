package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// The tests here run the imakexec binary as a subprocess against the kernel model (they
// were in package handover, whose tests should not build a command).

// cliEnv is a kernel model served over FUSE and a store, driven through the binary.
type cliEnv struct {
	t     testing.TB
	bin   string
	env   *kmodeltest.Env
	store string
	files int
}

func newCLIEnv(t testing.TB, cfg kmodel.Config) *cliEnv {
	t.Helper()
	return &cliEnv{t: t, bin: imakexecBinary(t), env: kmodeltest.Mount(t, cfg), store: filepath.Join(t.TempDir(), "store")}
}

func (e *cliEnv) cmd(args ...string) *exec.Cmd {
	full := append([]string{"--securityfs", e.env.Securityfs, "--tpm", "unix:" + e.env.TPMSocket}, args...)
	full = append(full, "--proc", e.env.Proc, "--store", e.store)
	return exec.Command(e.bin, full...)
}

func (e *cliEnv) run(args ...string) (string, int) {
	out, err := e.cmd(args...).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("%v: %v", args, err)
	}
	return string(out), code
}

// work measures n new files in the model kernel.
func (e *cliEnv) work(n int) {
	e.t.Helper()
	for i := 0; i < n; i++ {
		e.files++
		p := fmt.Sprintf("/usr/bin/tool-%d", e.files)
		if _, err := e.env.Kernel.Exec(p, []byte(p)); err != nil {
			e.t.Fatal(err)
		}
	}
}

// mustVerify: `imakexec verify` proves the store plus the kernel's held records against
// the TPM in every bank (exit 0), and `status` finds the store consistent.
func (e *cliEnv) mustVerify(what string) {
	e.t.Helper()
	if out, code := e.run("verify", "--json"); code != 0 || !strings.Contains(out, `"verified": true`) {
		e.t.Fatalf("%s: verify: exit %d: %s", what, code, out)
	}
}

func TestCLIStatusDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	e := newCLIEnv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(40)
	out, code := e.run("drain", "--json")
	if code != 0 || !strings.Contains(out, `"backend": "staged"`) {
		t.Fatalf("drain: %d %s", code, out)
	}
	out, code = e.run("status")
	if code != 0 || !strings.Contains(out, "staged") || !strings.Contains(out, "resetCount") {
		t.Fatalf("status: %d %s", code, out)
	}
	t.Logf("status:\n%s", out)
	out, code = e.run("status", "--json")
	if code != 0 || !strings.Contains(out, `"chain_records": 41`) {
		t.Fatalf("status --json: %d %s (want the boot_aggregate and 40 records)", code, out)
	}
	// a tampered store exits 1
	os.WriteFile(filepath.Join(e.store, "manifest.jsonl"), []byte(`{"type":"header","index":0}`+"\n"+`{"type":"x","index":5}`+"\n"), 0o600)
	if out, code = e.run("drain"); code != 1 {
		t.Fatalf("drain on tampered store: %d %s", code, out)
	}
}

// TestKill9 runs `imakexec drain` and kills it with SIGKILL at random moments; the next
// drain must leave no record lost and none duplicated.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	for _, c := range []struct {
		name    string
		cfg     kmodel.Config
		backend string
	}{
		{"staged", kmodel.Config{Profile: kmodel.Profile72}, "staged"},
		{"delete-n", kmodel.Config{Profile: kmodel.Profile72}, "delete-n"},
		{"trim-log", kmodel.Config{Profile: kmodel.Profile72Trim}, "trim-log"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newCLIEnv(t, c.cfg)
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 7))
			killed := 0
			for i := 0; i < 8; i++ {
				e.work(1000 + rng.IntN(2000))
				cmd := e.cmd("drain", "--backend", c.backend)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				delay := time.Duration(2000+rng.IntN(25000)) * time.Microsecond
				time.Sleep(delay)
				cmd.Process.Kill()
				err := cmd.Wait()
				if err != nil {
					killed++
				}
				t.Logf("round %d: kill after %v: %v %s", i, delay, err, strings.TrimSpace(out.String()))
				if out, code := e.run("drain", "--backend", c.backend); code != 0 {
					t.Fatalf("drain after kill -9 (seed %d, round %d): exit %d: %s", seed, i, code, out)
				}
				e.mustVerify(fmt.Sprintf("round %d", i))
			}
			t.Logf("%d of 8 drains killed", killed)
		})
	}
}

// BenchmarkDrainCLI measures the drain's own memory: `imakexec drain` as a subprocess
// (the kernel model and FUSE server stay in the test process), its peak RSS (peakRSS)
// per list size.
func BenchmarkDrainCLI(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			e := newCLIEnv(b, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
			var rss int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				if _, err := e.env.Kernel.Synthetic(n); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				cmd := e.cmd("drain", "--backend", "staged")
				cmd.Env = append(os.Environ(), "GODEBUG=gctrace=1")
				var ob bytes.Buffer
				cmd.Stdout, cmd.Stderr = &ob, &ob
				hwm, err := peakRSS(cmd)
				out := ob.Bytes()
				if err != nil {
					b.Fatalf("drain: %v %s", err, out)
				}
				if os.Getenv("IMAKEXEC_BENCH_GCTRACE") != "" {
					b.Logf("%s", out)
				}
				rss = hwm
			}
			b.ReportMetric(float64(rss)/1024, "peak-rss-MiB")
		})
	}
}
