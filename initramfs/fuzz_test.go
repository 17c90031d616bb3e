package initramfs

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzHandoff feeds hostile bytes to the readers the next kernel runs on the handoff the
// old kernel left: handoff.json (ParseHandoff, and ReadHandoff over the unpacked
// directory with one store file) and the imakexec.initrd= digests of /proc/cmdline. They
// must return an error, never panic, and what parses must survive a round trip.
func FuzzHandoff(f *testing.F) {
	data := []byte("segment bytes")
	h := &Handoff{Format: HandoffFormat, Version: HandoffVersion, OldKernel: OldKernel{IMAHash: "sha256", Templates: []string{"ima-ngv2"}},
		Store: StoreInfo{Dir: HandoffStoreDir, Files: []StoreFile{NewStoreFile("segments/00000001.kexec", data)}}}
	good, err := MarshalHandoff(h)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, data, "console=ttyS0 imakexec.initrd=sha256:00ff,sha1:0102")
	f.Add([]byte(`{"format":"imakexec-handoff","version":1,"store":{"dir":"imakexec/store","files":[{"name":"../x","size":-1}]}}`), []byte{}, `"imakexec.initrd=sha512:`)
	f.Add([]byte(`{"format":"imakexec-handoff","version":1,"old_kernel":{"ima_hash":"sha256"},"store":{"dir":"imakexec/store","files":[{"name":"a/b/c/d/e","size":1,"sha256":"`+string(make([]byte, 64))+`"}]}}`), []byte{1}, "imakexec.initrd=:,:")
	f.Fuzz(func(t *testing.T, js, file []byte, cmdline string) {
		InitrdDigests(cmdline)
		if p, err := ParseHandoff(js); err == nil {
			b, err := MarshalHandoff(p)
			if err != nil {
				t.Fatalf("a parsed handoff does not marshal: %v", err)
			}
			if _, err := ParseHandoff(b); err != nil {
				t.Fatalf("a marshalled handoff does not parse: %v", err)
			}
		}
		dir := t.TempDir()
		store := filepath.Join(dir, "store", "segments")
		if err := os.MkdirAll(store, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "handoff.json"), js, 0o600)
		os.WriteFile(filepath.Join(store, "00000001.kexec"), file, 0o600)
		if r, err := ReadHandoff(dir); err == nil {
			for _, f := range r.Store.Files {
				if int64(len(f.Data)) != f.Size {
					t.Fatalf("store file %s: %d bytes read, %d listed", f.Name, len(f.Data), f.Size)
				}
			}
		}
	})
}
