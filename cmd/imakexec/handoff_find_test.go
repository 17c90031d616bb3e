package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

func diskListing(t *testing.T, store string, files map[string]string) *initramfs.Handoff {
	t.Helper()
	h := &initramfs.Handoff{DiskStore: &initramfs.StoreInfo{Dir: store}}
	for n, d := range files {
		if err := os.WriteFile(filepath.Join(store, n), []byte(d), 0o600); err != nil {
			t.Fatal(err)
		}
		f := initramfs.NewStoreFile(n, []byte(d))
		f.Data = nil
		h.DiskStore.Files = append(h.DiskStore.Files, f)
	}
	return h
}

func TestCheckDiskStore(t *testing.T) {
	store := t.TempDir()
	h := diskListing(t, store, map[string]string{"manifest.json": "{\"a\":1}\n", "seg-000001.kexec": "records"})
	if err := checkDiskStore(h, store); err != nil {
		t.Fatalf("unchanged store: %v", err)
	}
	// The last drain of the shutdown appends to the manifest and adds a segment: fine.
	f, _ := os.OpenFile(filepath.Join(store, "manifest.json"), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("{\"b\":2}\n")
	f.Close()
	os.WriteFile(filepath.Join(store, "seg-000002.kexec"), []byte("more"), 0o600)
	if err := checkDiskStore(h, store); err != nil {
		t.Fatalf("store that only grew: %v", err)
	}
	// A rewritten segment and a removed one are named.
	os.WriteFile(filepath.Join(store, "seg-000001.kexec"), []byte("recorDs"), 0o600)
	err := checkDiskStore(h, store)
	if !errors.Is(err, handover.ErrTampered) || !strings.Contains(err.Error(), "seg-000001.kexec") || !strings.Contains(err.Error(), "disagrees") {
		t.Fatalf("rewritten segment: %v, want ErrTampered naming seg-000001.kexec", err)
	}
	os.Remove(filepath.Join(store, "seg-000001.kexec"))
	if err := checkDiskStore(h, store); !errors.Is(err, handover.ErrTampered) || !strings.Contains(err.Error(), "seg-000001.kexec") {
		t.Fatalf("removed segment: %v", err)
	}
	// A truncated manifest too.
	os.WriteFile(filepath.Join(store, "seg-000001.kexec"), []byte("records"), 0o600)
	os.WriteFile(filepath.Join(store, "manifest.json"), []byte("{\"a\""), 0o600)
	if err := checkDiskStore(h, store); !errors.Is(err, handover.ErrTampered) || !strings.Contains(err.Error(), "manifest.json: 4 bytes") {
		t.Fatalf("truncated manifest: %v", err)
	}
	// A symlink in place of a listed file is refused, not followed.
	os.Remove(filepath.Join(store, "manifest.json"))
	os.Symlink(filepath.Join(store, "seg-000001.kexec"), filepath.Join(store, "manifest.json"))
	if err := checkDiskStore(h, store); !errors.Is(err, handover.ErrTampered) {
		t.Fatalf("symlinked manifest: %v", err)
	}
	if err := checkDiskStore(&initramfs.Handoff{}, store); err != nil {
		t.Fatalf("handoff without a disk listing: %v", err)
	}
}

func TestFindHandoff(t *testing.T) {
	store := t.TempDir()
	if h, d, err := findHandoff(filepath.Join(t.TempDir(), "none"), store); h != nil || d != "" || err != nil {
		t.Fatalf("no handoff: %v %q %v", h, d, err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "handoff.json"), []byte("{"), 0o600)
	if _, d, err := findHandoff(bad, store); !errors.Is(err, initramfs.ErrHandoff) || d != bad {
		t.Fatalf("malformed handoff: %q %v, want ErrHandoff", d, err)
	}
	dirs := handoffDirs(store)
	if dirs[0] != KeptHandoffDir || dirs[1] != "/imakexec" || dirs[2] != filepath.Join(store, "handoff") {
		t.Fatalf("search order %q", dirs)
	}
}

func TestStoreOnDisk(t *testing.T) {
	for carry, want := range map[string]bool{"store": false, "window": true} {
		if got, err := storeOnDisk(carry, "/nonexistent"); err != nil || got != want {
			t.Errorf("--carry %s: %v %v", carry, got, err)
		}
	}
	if _, err := storeOnDisk("all", t.TempDir()); err == nil {
		t.Error("--carry all accepted")
	}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if got, err := storeOnDisk("auto", "/dev/shm/imakexec-not-there/store"); err != nil || got {
			t.Errorf("store under tmpfs /dev/shm: on disk %v, %v", got, err)
		}
	}
}
