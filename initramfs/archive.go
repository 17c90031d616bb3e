package initramfs

import (
	"bytes"
	"fmt"
	"io"

	"github.com/u-root/u-root/pkg/cpio"
)

// Writing uses u-root's pkg/cpio (its writer is fine; its reader is not used on untrusted
// input). Names are written relative ("imakexec/store/x"); the kernel unpacks them below
// the rootfs root and needs every parent directory listed before its children.

// PadLen returns the NUL bytes to put after an image of baseLen bytes so that an appended
// archive starts 4-byte aligned. The kernel checks alignment against the absolute offset in
// the initrd, also after a compressed segment (unpack_to_rootfs: this_header =
// saved_offset + my_inptr), so absolute padding is right in both cases.
func PadLen(baseLen int64) int64 { return pad4(baseLen) }

// HandoffArchive encodes h (handoff.json) and the store files as one newc archive with a
// trailer: directories imakexec/ and imakexec/store/ (0700), handoff.json and the files
// (0600, uid/gid 0, mtime 0). h.Store is filled from files (sorted by name); the files'
// Data must be set.
func HandoffArchive(h *Handoff, files []StoreFile) ([]byte, error) {
	files = sortedStore(files)
	h.Store = StoreInfo{Dir: HandoffStoreDir, Files: make([]StoreFile, 0, len(files))}
	for _, f := range files {
		if f.Data == nil && f.Size != 0 {
			return nil, fmt.Errorf("store file %q: no data", f.Name)
		}
		h.Store.Files = append(h.Store.Files, NewStoreFile(f.Name, f.Data))
	}
	js, err := MarshalHandoff(h)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	ino := uint64(0)
	next := func() uint64 { ino++; return ino }
	recs := []cpio.Record{
		{Info: cpio.Info{Name: HandoffDir, Mode: cpio.S_IFDIR | handoffDirPerm, NLink: 2, Ino: next()}},
		{Info: cpio.Info{Name: HandoffStoreDir, Mode: cpio.S_IFDIR | handoffDirPerm, NLink: 2, Ino: next()}},
		cpio.StaticRecord(js, cpio.Info{Name: HandoffJSONName, Mode: cpio.S_IFREG | handoffJSONPerm, NLink: 1, Ino: next()}),
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	for _, d := range storeDirs(names) {
		recs = append(recs, cpio.Record{Info: cpio.Info{Name: HandoffStoreDir + "/" + d, Mode: cpio.S_IFDIR | handoffDirPerm, NLink: 2, Ino: next()}})
	}
	for _, f := range files {
		recs = append(recs, cpio.StaticRecord(f.Data, cpio.Info{
			Name: HandoffStoreDir + "/" + f.Name, Mode: cpio.S_IFREG | storeFilePerm, NLink: 1, Ino: next(),
		}))
	}
	if err := writeAll(w, recs); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeAll writes records and a trailer, refusing the duplicates u-root's DedupWriter
// would silently drop.
func writeAll(w cpio.RecordWriter, recs []cpio.Record) error {
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[r.Name] {
			return fmt.Errorf("write archive: %q twice", r.Name)
		}
		seen[r.Name] = true
		if err := w.WriteRecord(r); err != nil {
			return fmt.Errorf("write archive: %s: %w", r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return fmt.Errorf("write archive trailer: %w", err)
	}
	return nil
}

// AppendArchive writes NUL padding for a base image of baseLen bytes, then archive, to w:
// the kernel-style concatenation. It returns the offset at which the archive starts.
func AppendArchive(w io.Writer, baseLen int64, archive []byte) (int64, error) {
	pad := PadLen(baseLen)
	if pad > 0 {
		if _, err := w.Write(make([]byte, pad)); err != nil {
			return 0, err
		}
	}
	if _, err := w.Write(archive); err != nil {
		return 0, err
	}
	return baseLen + pad, nil
}
