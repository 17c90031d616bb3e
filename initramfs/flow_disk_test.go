package initramfs

import (
	"bytes"
	"testing"
)

// With the store on disk, the initrd carries no store file, only their listing: what
// rejoin compares the disk with.
func TestKexecStoreOnDiskCarriesListingOnly(t *testing.T) {
	e := newEnv(t)
	e.opts.StoreOnDisk = true
	rep, err := e.run(t)
	if err != nil {
		t.Fatal(err)
	}
	ih, err := ReadImageHandoff(bytes.NewReader(e.kx.initrd), int64(len(e.kx.initrd)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h := ih.Handoff
	if len(h.Store.Files) != 0 || rep.Store.Files != 0 {
		t.Fatalf("carried %d store files (report %d), want none", len(h.Store.Files), rep.Store.Files)
	}
	disk := diskStore(t, e.opts.Store)
	if h.DiskStore == nil || len(h.DiskStore.Files) != len(disk) {
		t.Fatalf("disk store listing %+v, want the %d files on disk", h.DiskStore, len(disk))
	}
	for _, f := range h.DiskStore.Files {
		d, ok := disk[f.Name]
		if !ok || f.Size != int64(len(d)) || f.SHA256 != sha256hex([]byte(d)) {
			t.Errorf("listing %+v does not match the disk file (%d bytes)", f, len(d))
		}
	}
}
