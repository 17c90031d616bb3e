package handover

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// A complete manifest line is one JSON value and nothing else: anything after it, a closing
// brace included, is tampering on that line (the decoder reused for every line must not
// carry it into the next one or let it pass on the last).
func TestManifestDataAfterEntry(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 2)
	s, err := OpenStore(e.store)
	if err != nil {
		t.Fatal(err)
	}
	n := len(s.entries)
	for _, suffix := range []string{"}", "]", " {}", "x", "\t}"} {
		dir := filepath.Join(t.TempDir(), "store")
		copyDir(t, e.store, dir)
		j := Entry{Type: EntryJoin, Index: n, Prev: s.lastHash, Time: time.Now().UTC(), Join: &Join{BootID: "b", Generation: 1}}
		line, err := encodeEntry(&j)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(filepath.Join(dir, manifestName), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(append(append(line, suffix...), '\n'))
		f.Close()
		_, err = OpenStore(dir)
		var te *TamperError
		if !errors.As(err, &te) || te.Line != n+1 || !strings.Contains(err.Error(), "data after the entry") {
			t.Errorf("manifest line followed by %q: %v, want a TamperError at line %d naming the data after the entry", suffix, err, n+1)
		}
	}
	// The same line without a suffix, and with trailing white space, loads.
	for _, suffix := range []string{"", "  \t"} {
		dir := filepath.Join(t.TempDir(), "store")
		copyDir(t, e.store, dir)
		j := Entry{Type: EntryJoin, Index: n, Prev: s.lastHash, Time: time.Now().UTC(), Join: &Join{BootID: "b", Generation: 1}}
		line, _ := encodeEntry(&j)
		f, err := os.OpenFile(filepath.Join(dir, manifestName), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(append(append(line, suffix...), '\n'))
		f.Close()
		if ls, err := OpenStore(dir); err != nil || len(ls.entries) != n+1 {
			t.Errorf("manifest line followed by %q: %v", suffix, err)
		}
	}
}
