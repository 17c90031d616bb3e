package initramfs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/storefs"
)

// The flow reads store files the store's way (storefs): a store file another user could
// rewrite (here one writable by others) is refused before the drain, never carried, and the
// default KexecOptions.OpenStore is that check (the test's traced wrapper is not used here).
func TestKexecRefusesUnsafeStoreFile(t *testing.T) {
	for _, traced := range []bool{true, false} {
		e := newEnv(t)
		if !traced {
			e.opts.OpenStore = nil
		}
		seg := filepath.Join(e.opts.Store, "seg-000001.kexec")
		if err := os.Chmod(seg, 0o666); err != nil {
			t.Fatal(err)
		}
		_, err := e.run(t)
		if !errors.Is(err, storefs.ErrUnsafe) || !strings.Contains(err.Error(), "seg-000001.kexec") {
			t.Fatalf("kexec with a world-writable store file (traced open %v): %v, want storefs.ErrUnsafe naming it", traced, err)
		}
		if i := e.tr.index("steps.drain"); i >= 0 {
			t.Fatalf("the drain ran (event %d) although a store file was refused", i)
		}
	}
}
