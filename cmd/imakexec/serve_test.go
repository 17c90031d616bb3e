package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// imakexec serve on the kernel model: READY=1 reaches $NOTIFY_SOCKET only once the files
// can be read, the ASCII list equals `imakexec export --format ascii`, and SIGTERM (the
// context) unmounts and exits 0.
func TestServeNotifiesAndServes(t *testing.T) {
	ke := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
	for i := range 20 {
		if _, err := ke.Kernel.Exec("/usr/bin/t"+string(rune('a'+i)), []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "log")
	global := []string{"--securityfs", ke.Securityfs, "--tpm", "unix:" + ke.TPMSocket}
	var out, errb bytes.Buffer
	if code := run(context.Background(), &Env{Stdout: &out, Stderr: &errb}, append(global, "rejoin", "--store", store, "--proc", ke.Proc)); code != 0 {
		t.Fatalf("rejoin: exit %d: %s", code, errb.String())
	}

	sockDir, _ := os.MkdirTemp("", "notify")
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "n")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	var serr syncBuf
	go func() {
		done <- run(ctx, &Env{Stdout: &bytes.Buffer{}, Stderr: &serr}, append(global, "serve", "--mount", mnt, "--store", store, "--proc", ke.Proc))
	}()
	l.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 512)
	n, err := l.Read(buf)
	if err != nil {
		t.Fatalf("no notification from serve: %v (stderr: %s)", err, serr.lines())
	}
	if msg := string(buf[:n]); !strings.HasPrefix(msg, "READY=1\n") || !strings.Contains(msg, "serving 21 records") {
		t.Fatalf("notification %q, want READY=1 and the record count (20 files and the boot_aggregate)", msg)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "ascii_runtime_measurements"))
	if err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := run(context.Background(), &Env{Stdout: &out, Stderr: &errb}, append(global, "export", "--format", "ascii", "--store", store, "--proc", ke.Proc)); code != 0 {
		t.Fatalf("export: exit %d: %s", code, errb.String())
	}
	if !bytes.Equal(got, out.Bytes()) || len(got) == 0 {
		t.Fatalf("served list (%d bytes) differs from export (%d bytes)", len(got), out.Len())
	}
	if err := os.WriteFile(filepath.Join(mnt, "ascii_runtime_measurements_sha1"), []byte("x"), 0); err == nil {
		t.Fatal("the view accepted a write")
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d: %s", code, serr.lines())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop on cancel")
	}
	if n, _ := l.Read(buf); !strings.HasPrefix(string(buf[:n]), "STOPPING=1") {
		t.Fatalf("no STOPPING=1 notification: %q", buf[:n])
	}
	if _, err := os.Stat(filepath.Join(mnt, "ascii_runtime_measurements")); err == nil {
		t.Fatal("the view is still mounted after serve stopped")
	}
}
