package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSpace(s.b.String()), "\n")
}

func TestSim(t *testing.T) {
	kmodeltest.RequireFUSE(t)
	dir := t.TempDir()
	mnt := filepath.Join(dir, "sec")
	os.Mkdir(mnt, 0o755)
	sockDir, _ := os.MkdirTemp("", "sim")
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "tpm")
	ctl := filepath.Join(dir, "events")
	os.WriteFile(filepath.Join(dir, "hello"), []byte("hello"), 0o755)
	os.WriteFile(filepath.Join(dir, "k"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(dir, "i"), []byte("initrd"), 0o644)
	script := strings.Join([]string{
		"exec " + filepath.Join(dir, "hello"),
		"read " + filepath.Join(dir, "hello"),
		"buffer kexec-cmdline console=ttyS0 quiet",
		"violation /tmp/x",
		"synthetic 10",
		"kexec-load " + filepath.Join(dir, "k") + " " + filepath.Join(dir, "i") + " console=ttyS0",
		"kexec-execute",
		"bogus",
	}, "\n") + "\n"
	os.WriteFile(ctl, []byte(script), 0o600)
	out := &syncBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- run(ctx, &Env{Stdout: out, Stderr: os.Stderr}, []string{"sim", "--profile", "6.16", "--mount", mnt, "--tpm-socket", sock, "--control", ctl})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for len(out.lines()) < 9 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	lines := out.lines()
	if len(lines) < 9 {
		cancel()
		t.Fatalf("got %d output lines: %q", len(lines), lines)
	}
	var last map[string]any
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d is not JSON: %q", i, l)
		}
		last = m
		if i >= 1 && i <= 7 && m["ok"] != true {
			t.Errorf("event failed: %s", l)
		}
	}
	if last["ok"] != false {
		t.Errorf("unknown event accepted: %v", last)
	}
	// The list in the mount replays to the TPM served on the socket.
	b, err := os.ReadFile(filepath.Join(mnt, "ima", "binary_runtime_measurements_sha256"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := serialize.Replay(serialize.NewBinaryReader(bytes.NewReader(b), serialize.NewDigester().Order, 32), serialize.ReplayOptions{Banks: []serialize.Bank{serialize.SHA256}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Records < 17 {
		t.Errorf("carried list has %d records", res.Records)
	}
	tp, err := linuxudstpm.Open(sock)
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := kmodel.ReadPCRs(tp, []serialize.Bank{serialize.SHA256}, []uint32{10})
	tp.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Verify(pcrs); err != nil {
		t.Error(err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sim did not stop")
	}
	if _, err := os.Stat(filepath.Join(mnt, "integrity")); err == nil {
		t.Error("still mounted after stop")
	}
}
