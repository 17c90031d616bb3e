package storefs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Dir's names are single components resolved from its descriptor: a symlink in place of a
// subdirectory or a file is refused, "../x" and "a/b" are refused, and a write made after
// the directory was renamed away lands in the renamed directory.
func TestDirResolvesFromDescriptor(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "store")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	outside := filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Sub("sub", true, 0o700); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("Sub on a symlink: %v, want it refused as a symlink", err)
	}
	if err := os.Symlink(filepath.Join(outside, "f"), filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Create("f", unix.O_WRONLY, 0o600); err == nil {
		t.Fatal("Create over a symlink succeeded")
	}
	if err := d.WriteFileAtomic("f", []byte("x"), 0o600); err != nil {
		t.Fatal(err) // the rename replaces the symlink itself, never its target
	}
	if _, err := os.Lstat(filepath.Join(outside, "f")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a write through the symlink reached its target: %v", err)
	}
	for _, bad := range []string{"../x", "a/b", "", ".", ".."} {
		if _, err := d.Create(bad, unix.O_WRONLY, 0o600); !errors.Is(err, ErrUnsafe) {
			t.Errorf("Create(%q): %v, want ErrUnsafe", bad, err)
		}
	}
	moved := filepath.Join(base, "moved")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, dir); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteFileAtomic("g", []byte("y"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(moved, "g")); err != nil || string(b) != "y" {
		t.Fatalf("write after the directory was swapped: %q %v, want it in the opened directory", b, err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("the swapped-in symlink's target got %d entries", len(ents))
	}
}
