package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// readChars is rchar of /proc/PID/io: bytes the process has read so far.
func readChars(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "rchar:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return -1
}

// interrupt starts the CLI, waits until ready says it is at work, sends SIGTERM, and returns
// its exit code, stderr and how long it took to exit after the signal.
func interrupt(t *testing.T, bin string, m *modelCLI, ready func(pid int) bool, args ...string) (int, string, time.Duration) {
	t.Helper()
	cmd := exec.Command(bin, m.args(args...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !ready(cmd.Process.Pid) {
		select {
		case err := <-done:
			t.Fatalf("imakexec %s ended before it could be interrupted (make the store larger): %v %s", args[0], err, errb.String())
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("imakexec %s never got to work", args[0])
		}
	}
	sent := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("imakexec %s ignored SIGTERM for 10 s", args[0])
	}
	return cmd.ProcessState.ExitCode(), errb.String(), time.Since(sent)
}

func readMore(n int64) func(int) bool {
	return func(pid int) bool { return readChars(pid) > n }
}

// lockFree checks no process holds the store's lock.
func lockFree(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("the store's lock is still held after the command exited: %v", err)
	}
}

// TestSIGTERM interrupts drain, export, verify, status and rejoin on a large store (the
// built CLI as a subprocess, against the FUSE kernel model): each stops within a second or
// two with exit 2, leaves no temp file, releases the lock and loses nothing; the next run
// of the same command succeeds.
func TestSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the CLI and a 600,000-record store")
	}
	bin := imakexecBinary(t)
	m := newModelCLI(t, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	const n = 600_000
	if _, err := m.env.Kernel.Synthetic(n); err != nil {
		t.Fatal(err)
	}
	if _, err := handover.Drain(context.Background(), handover.DrainOptions{Paths: handover.Paths{Securityfs: m.env.Securityfs, Proc: m.env.Proc}, StoreDir: m.store, TPM: m.env.TPM}); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, name string, code int, stderr string, took time.Duration) {
		t.Helper()
		if code != exitError || !strings.Contains(stderr, "context canceled") {
			t.Fatalf("%s after SIGTERM: exit %d: %s", name, code, stderr)
		}
		if took > 3*time.Second {
			t.Fatalf("%s took %v to stop after SIGTERM", name, took)
		}
		t.Logf("%s stopped %v after SIGTERM: %s", name, took.Round(time.Millisecond), strings.TrimSpace(stderr))
		lockFree(t, m.store)
		ents, _ := os.ReadDir(filepath.Join(m.store, "segments"))
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".tmp") {
				t.Fatalf("%s left %s", name, e.Name())
			}
		}
	}

	t.Run("drain", func(t *testing.T) {
		if _, err := m.env.Kernel.Synthetic(n); err != nil {
			t.Fatal(err)
		}
		held := len(m.env.Kernel.Staged()) + len(m.env.Kernel.List())
		tmpSeen := func(int) bool {
			ents, _ := os.ReadDir(filepath.Join(m.store, "segments"))
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".tmp") {
					return true
				}
			}
			return false
		}
		code, stderr, took := interrupt(t, bin, m, tmpSeen, "drain")
		check(t, "drain", code, stderr, took)
		if now := len(m.env.Kernel.Staged()) + len(m.env.Kernel.List()); now != held {
			t.Fatalf("the kernel held %d records, %d after the interrupted drain: it deleted", held, now)
		}
		m.must("drain")
		if code, _, stderr := m.run("verify"); code != 0 {
			t.Fatalf("verify after the interrupted drain: %s", stderr)
		}
	})
	t.Run("export", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "log.bin")
		code, stderr, took := interrupt(t, bin, m, readMore(16<<20), "export", "-o", out)
		check(t, "export", code, stderr, took)
		if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
			t.Fatalf("the interrupted export left %s", ents[0].Name())
		}
	})
	t.Run("verify", func(t *testing.T) {
		code, stderr, took := interrupt(t, bin, m, readMore(16<<20), "verify")
		check(t, "verify", code, stderr, took)
	})
	t.Run("status", func(t *testing.T) {
		// status reads the manifest only; it waits when a drain holds the store.
		f, err := os.OpenFile(filepath.Join(m.store, "lock"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		code, stderr, took := interrupt(t, bin, m, func(int) bool { return time.Since(start) > 300*time.Millisecond }, "status")
		f.Close()
		if !strings.Contains(stderr, fmt.Sprintf("held by pid %d", os.Getpid())) {
			t.Fatalf("status does not name the lock's holder: %s", stderr)
		}
		check(t, "status", code, stderr, took)
	})
	t.Run("rejoin", func(t *testing.T) {
		if err := m.env.Kernel.KexecLoad([]byte("vmlinuz"), []byte("initrd"), "console=ttyS0"); err != nil {
			t.Fatal(err)
		}
		if err := m.env.Kernel.KexecExecute(); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(filepath.Join(m.store, "manifest.jsonl"))
		code, stderr, took := interrupt(t, bin, m, readMore(16<<20), "rejoin")
		check(t, "rejoin", code, stderr, took)
		if after, _ := os.ReadFile(filepath.Join(m.store, "manifest.jsonl")); !bytes.Equal(before, after) {
			t.Fatal("the interrupted rejoin changed the manifest")
		}
		if code, _, stderr := m.run("rejoin"); code != 0 {
			t.Fatalf("rejoin after the interrupted one: exit %d %s", code, stderr)
		}
	})
}

// TestExportDuringDrains runs `imakexec export` again and again while `imakexec drain`
// runs again and again and the kernel model measures more: every export that exits 0 must
// be a byte prefix of the final export (no gap, no record twice) and hold at least every
// record measured before it started.
func TestExportDuringDrains(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the CLI a few dozen times")
	}
	bin := imakexecBinary(t)
	m := newModelCLI(t, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	var measured atomic.Int64
	synth := func(n int) {
		if _, err := m.env.Kernel.Synthetic(n); err != nil {
			t.Error(err)
		}
		measured.Add(int64(n))
	}
	synth(20_000)
	m.must("drain")
	drains := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		defer close(drains)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			synth(3000)
			if out, err := exec.Command(bin, m.args("drain")...).CombinedOutput(); err != nil {
				drains <- fmt.Errorf("drain %d: %v %s", i, err, out)
				return
			}
		}
	}()
	type export struct {
		out    []byte
		before int64
	}
	var exports []export
	for i := 0; i < 25; i++ {
		before := measured.Load()
		cmd := exec.Command(bin, m.args("export", "--format", "binary")...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Logf("export %d failed (allowed, never short with exit 0): %v %s", i, err, errb.String())
			continue
		}
		exports = append(exports, export{out.Bytes(), before})
	}
	close(stop)
	if err := <-drains; err != nil {
		t.Fatal(err)
	}
	final := m.must("export", "--format", "binary")
	if len(exports) < 20 {
		t.Fatalf("only %d of 25 exports succeeded", len(exports))
	}
	for i, e := range exports {
		n, err := countBinary(e.out)
		if err != nil {
			t.Fatalf("export %d does not parse: %v", i, err)
		}
		if !strings.HasPrefix(final, string(e.out)) {
			t.Fatalf("export %d (%d records) is not a prefix of the final export: a gap or a doubled record", i, n)
		}
		if int64(n) < e.before {
			t.Fatalf("export %d has %d records, %d were measured before it started", i, n, e.before)
		}
	}
	t.Logf("%d exports during drains, all consistent; final chain %d bytes", len(exports), len(final))
}

func countBinary(b []byte) (int, error) {
	r := serialize.NewBinaryReader(bytes.NewReader(b), binary.LittleEndian, serialize.SHA1Size)
	n := 0
	for {
		_, err := r.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}
