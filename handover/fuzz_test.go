package handover

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzManifest opens a store whose manifest.jsonl is the input, through the exported entry
// point (OpenStore, so the fuzzer follows the parser however it reads), then checks it.
// A hostile manifest must give an error naming it, never a panic; an empty one is an
// empty store.
func FuzzManifest(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "store", manifestName)); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"type":"header","index":0,"time":"2026-01-01T00:00:00Z","header":{"version":1,"store_id":"x","tpm":{"reset_count":1,"restart_count":0},"banks":["sha1","sha256"]}}` + "\n"))
	f.Add([]byte(`{"type":"header","index":0}` + "\n" + `{"type":"segment","index":1,"prev":"","segment":{"number":1,"file":"../../etc/passwd","count":18446744073709551615}}` + "\n"))
	f.Add([]byte("{\n"))
	f.Fuzz(func(t *testing.T, manifest []byte) {
		dir := filepath.Join(t.TempDir(), "store")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, manifestName), manifest, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenStore(dir)
		if err != nil {
			return
		}
		s.Boots()
		s.ChainSegments()
		s.Check()
	})
}
