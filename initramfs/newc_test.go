package initramfs

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
)

// newcRec builds one newc record by hand (so hostile headers can be written).
func newcRec(name string, mode, nlink, size uint32, nameSize uint32, data []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		1, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, nameSize, 0)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func rec(name string, mode uint32, data []byte) []byte {
	return newcRec(name, mode, 1, uint32(len(data)), uint32(len(name)+1), data)
}

func trailer() []byte { return rec(trailerName, 0, nil) }

// baseArchive is a small "distribution initrd": written by u-root's cpio writer.
func baseArchive(t testing.TB) []byte {
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	recs := []cpio.Record{
		cpio.Directory("etc", 0o755),
		cpio.StaticFile("etc/hostname", "base\n", 0o644),
		cpio.StaticFile("init", "#!/bin/sh\necho hi\n", 0o755),
	}
	if err := writeAll(w, recs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testHandoff() *Handoff {
	return &Handoff{Format: HandoffFormat, Version: HandoffVersion,
		OldKernel: OldKernel{IMAHash: "sha256", IMAHashSource: "log", Templates: []string{"ima-ng"}},
		Cmdline:   Cmdline{Base: "console=ttyS0", Source: "append", Param: CmdlineParam}}
}

func testStore() []StoreFile {
	return []StoreFile{
		{Name: "segments/000001.kexec", Data: bytes.Repeat([]byte{0xab}, 1001)},
		{Name: "manifest.json", Data: []byte(`{"v":1}`)},
		{Name: "empty", Data: []byte{}},
	}
}

func gzipBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// appended concatenates base, padding and the handoff archive as the kexec flow does.
func appended(t testing.TB, base []byte) ([]byte, int64) {
	arch, err := HandoffArchive(testHandoff(), testStore())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	out.Write(base)
	off, err := AppendArchive(&out, int64(len(base)), arch)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), off
}

func TestAppendedArchiveReadBack(t *testing.T) {
	plain := baseArchive(t)
	// An odd-length first segment: the appended archive needs padding, and the kernel
	// counts alignment from the start of the image, also after a compressed segment.
	gz := gzipBytes(t, plain)
	for len(gz)%4 == 0 {
		gz = gzipBytes(t, append(plain, 0, 0, 0, 0)) // change the length
		plain = append(plain, 0, 0, 0, 0)
	}
	cases := []struct {
		name  string
		base  []byte
		comps []string
	}{
		{"no base", nil, []string{""}},
		{"plain base", baseArchive(t), []string{"", ""}},
		{"gzip base", gz, []string{"gzip", ""}},
		{"zstd base", zstdBytes(t, baseArchive(t)), []string{"zstd", ""}},
		{"microcode plain + zstd base (Debian layout)", append(baseArchive(t), zstdBytes(t, baseArchive(t))...), []string{"", "zstd", ""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, off := appended(t, c.base)
			if off%4 != 0 || off < int64(len(c.base)) || off-int64(len(c.base)) > 3 {
				t.Fatalf("archive offset %d after %d base bytes", off, len(c.base))
			}
			ih, err := ReadImageHandoff(bytes.NewReader(img), int64(len(img)), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range ih.Segments {
				got = append(got, s.Compression)
			}
			if fmt.Sprint(got) != fmt.Sprint(c.comps) {
				t.Fatalf("segments %q, want %q", got, c.comps)
			}
			if ih.Segment != len(c.comps)-1 {
				t.Errorf("handoff in segment %d, want the last", ih.Segment)
			}
			if ih.Segments[len(ih.Segments)-1].Start != off {
				t.Errorf("handoff segment starts at %d, appended at %d", ih.Segments[len(ih.Segments)-1].Start, off)
			}
			h := ih.Handoff
			if h.Cmdline.Base != "console=ttyS0" || len(h.Store.Files) != 3 {
				t.Fatalf("handoff %+v", h)
			}
			want := map[string][]byte{}
			for _, f := range testStore() {
				want[f.Name] = f.Data
			}
			for _, f := range h.Store.Files {
				if !bytes.Equal(f.Data, want[f.Name]) {
					t.Errorf("store file %s: %d bytes differ", f.Name, len(f.Data))
				}
			}
			// Every base entry is seen too.
			n := 0
			if _, err := Walk(bytes.NewReader(img), int64(len(img)), Limits{}, func(e *Entry, _ io.Reader) error {
				if e.Name == "etc/hostname" {
					n++
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if wantN := strings.Count(fmt.Sprint(c.comps), " "); n != wantN {
				t.Errorf("saw etc/hostname %d times, want %d", n, wantN)
			}
		})
	}
}

func TestUnalignedAfterCompressedIsRefused(t *testing.T) {
	gz := gzipBytes(t, baseArchive(t))
	for pad := 4; len(gz)%4 == 0; pad += 4 {
		gz = gzipBytes(t, append(baseArchive(t), make([]byte, pad)...))
	}
	arch, _ := HandoffArchive(testHandoff(), testStore())
	img := append(append([]byte{}, gz...), arch...) // no padding
	_, err := Walk(bytes.NewReader(img), int64(len(img)), Limits{}, nil)
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "aligned") {
		t.Fatalf("err = %v, want an alignment error", err)
	}
}

func TestUnsupportedCompression(t *testing.T) {
	for name, magic := range map[string][]byte{
		"xz": {0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00}, "lz4": {0x02, 0x21, 0x4c, 0x18}, "bzip2": []byte("BZh9"),
		"lzma": {0x5d, 0, 0, 0x80}, "lzo": {0x89, 0x4c, 0x5a, 0x4f},
	} {
		img := append(append([]byte{}, magic...), make([]byte, 64)...)
		_, err := Walk(bytes.NewReader(img), int64(len(img)), Limits{}, nil)
		var fe *FormatError
		if !errors.Is(err, ErrUnsupportedCompression) || !errors.As(err, &fe) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestHostileArchives(t *testing.T) {
	good, _ := HandoffArchive(testHandoff(), testStore())
	store := func(name string, mode uint32, data []byte) []byte {
		var b []byte
		b = append(b, rec("imakexec", ModeDir|0o700, nil)...)
		b = append(b, rec("imakexec/store", ModeDir|0o700, nil)...)
		b = append(b, rec(name, mode, data)...)
		return append(b, trailer()...)
	}
	hugeName := newcRec("x", ModeRegular, 1, 0, 0x7ffffff0, nil)[:110]
	cases := []struct {
		name string
		img  []byte
		want error
		msg  string
	}{
		{"huge-namesize", hugeName, ErrLimit, "name size"},
		{"namesize-beyond-input", newcRec("abc", ModeRegular, 1, 0, 4000, nil), ErrLimit, "bytes left"},
		{"huge-filesize", newcRec("a", ModeRegular, 1, 0xfffffff0, 2, nil), ErrLimit, "file size"},
		{"zero-namesize", newcRec("", ModeRegular, 1, 0, 0, nil), ErrFormat, "name size"},
		{"name-without-nul", func() []byte { b := rec("abcd", ModeRegular, nil); b[110+4] = 'x'; return b }(), ErrFormat, "NUL"},
		{"nul-inside-name", rec("ab\x00c", ModeRegular, nil), ErrFormat, "NUL"},
		{"non-hex-header", func() []byte { b := rec("a", ModeRegular, nil); b[20] = 'g'; return b }(), ErrFormat, "hex"},
		{"odc-magic", append([]byte("070707"), make([]byte, 200)...), ErrFormat, "odc"},
		{"truncated-header", []byte("070701000"), ErrFormat, "truncated"},
		{"no-trailer", rec("a", ModeRegular, []byte("x")), ErrFormat, "truncated"},
		{"junk-after-trailer", append(trailer(), 'x', 'y', 'z', 'w'), ErrFormat, "invalid magic"},
		{"absolute-handoff-name", store("/imakexec/store/x", ModeRegular|0o600, []byte("x")), ErrHandoff, "absolute"},
		{"dotdot", store("imakexec/store/../../etc/passwd", ModeRegular|0o600, []byte("x")), ErrHandoff, ".."},
		{"dotdot-outside-handoff", append(rec("etc/../../x", ModeRegular, nil), append(trailer(), good...)...), ErrHandoff, ".."},
		{"unclean-name", store("imakexec//store/x", ModeRegular|0o600, []byte("x")), ErrHandoff, "not clean"},
		{"symlink", store("imakexec/store/x", ModeSymlink|0o777, []byte("/etc/shadow")), ErrHandoff, "symlink"},
		{"chardev", store("imakexec/store/x", ModeChar|0o600, nil), ErrHandoff, "device"},
		{"blockdev", store("imakexec/store/x", ModeBlock|0o600, nil), ErrHandoff, "device"},
		{"fifo", store("imakexec/store/x", ModeFIFO|0o600, nil), ErrHandoff, "file type"},
		{"hardlink", func() []byte {
			b := append(rec("imakexec", ModeDir|0o700, nil), newcRec("imakexec/handoff.json", ModeRegular|0o600, 2, 0, 22, nil)...)
			return append(b, trailer()...)
		}(), ErrHandoff, "hard link"},
		{"dir-outside-store", store("imakexec/other", ModeDir|0o700, nil), ErrHandoff, "unexpected directory"},
		{"too-deep", store("imakexec/store/a/b/c/d/e", ModeRegular|0o600, nil), ErrHandoff, "unexpected file"},
		{"foreign-file", append(append(rec("imakexec", ModeDir|0o700, nil), rec("imakexec/run.sh", ModeRegular|0o755, []byte("x"))...), trailer()...), ErrHandoff, "unexpected file"},
		{"handoff-in-two-segments", append(append(rec("imakexec", ModeDir|0o700, nil), trailer()...), good...), ErrHandoff, "segments"},
		{"symlink-named-imakexec-in-base", append(append(rec("imakexec", ModeSymlink|0o777, []byte("/etc")), trailer()...), good...), ErrHandoff, "symlink"},
		{"handoff-without-json", store("imakexec/store/x", ModeRegular|0o600, []byte("x")), ErrHandoff, "no imakexec/handoff.json"},
		{"no-handoff", baseArchive(t), ErrNoHandoff, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := ReadImageHandoff(bytes.NewReader(c.img), int64(len(c.img)), Limits{})
			runtime.ReadMemStats(&after)
			if !errors.Is(err, c.want) || !strings.Contains(fmt.Sprint(err), c.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, c.want, c.msg)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 8<<20 {
				t.Errorf("allocated %d bytes for a %d-byte input", d, len(c.img))
			}
		})
	}
}

func TestHandoffListingMismatch(t *testing.T) {
	h := testHandoff()
	arch, err := HandoffArchive(h, testStore())
	if err != nil {
		t.Fatal(err)
	}
	// Flip one byte of the segment file's data: the sha256 listing no longer matches.
	i := bytes.Index(arch, bytes.Repeat([]byte{0xab}, 64))
	bad := append([]byte{}, arch...)
	bad[i] ^= 1
	if _, err := ReadImageHandoff(bytes.NewReader(bad), int64(len(bad)), Limits{}); !errors.Is(err, ErrHandoff) || !strings.Contains(err.Error(), "listing") {
		t.Fatalf("err = %v", err)
	}
	// A version this reader does not know.
	h2 := testHandoff()
	h2.Version = 2
	if _, err := HandoffArchive(h2, nil); err == nil {
		t.Fatal("version 2 accepted")
	}
	if _, err := ParseHandoff([]byte(`{"format":"imakexec-handoff","version":2}`)); !errors.Is(err, ErrHandoff) {
		t.Fatalf("err = %v", err)
	}
	// Hostile store names in the JSON.
	for _, n := range []string{"../x", "a//b", "/a", "a/../b", "..", "", strings.Repeat("a", 256)} {
		js := fmt.Sprintf(`{"format":"imakexec-handoff","version":1,"old_kernel":{"ima_hash":"sha256"},"store":{"dir":"imakexec/store","files":[{"name":%q,"size":0,"sha256":"%s"}]}}`, n, strings.Repeat("0", 64))
		if _, err := ParseHandoff([]byte(js)); !errors.Is(err, ErrHandoff) {
			t.Errorf("name %q: err = %v", n, err)
		}
	}
}

func TestHandoffInCompressedSegmentRefused(t *testing.T) {
	arch, _ := HandoffArchive(testHandoff(), testStore())
	img := gzipBytes(t, arch)
	if _, err := ReadImageHandoff(bytes.NewReader(img), int64(len(img)), Limits{}); !errors.Is(err, ErrHandoff) || !strings.Contains(err.Error(), "compressed") {
		t.Fatalf("err = %v", err)
	}
}

func TestDecompressionLimit(t *testing.T) {
	// 4 MiB of NULs between archives compress to almost nothing.
	inner := append(baseArchive(t), make([]byte, 4<<20)...)
	img := gzipBytes(t, inner)
	_, err := Walk(bytes.NewReader(img), int64(len(img)), Limits{MaxDecompressed: 1 << 20}, nil)
	if !errors.Is(err, ErrLimit) {
		t.Fatalf("err = %v", err)
	}
	if _, err := Walk(bytes.NewReader(img), int64(len(img)), Limits{}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestZstdFrameLen(t *testing.T) {
	payload := bytes.Repeat([]byte("imakexec zstd frame "), 20000) // several blocks
	fr := zstdBytes(t, payload)
	img := append(append([]byte{}, fr...), 0xde, 0xad)
	n, err := zstdFrameLen(bytes.NewReader(img), 0, int64(len(img)))
	if err != nil || n != int64(len(fr)) {
		t.Fatalf("frame len %d, %v; want %d", n, err, len(fr))
	}
	if _, err := zstdFrameLen(bytes.NewReader(fr[:len(fr)-2]), 0, int64(len(fr)-2)); err == nil {
		t.Fatal("truncated frame accepted")
	}
}

func FuzzWalk(f *testing.F) {
	img, _ := appended(f, baseArchive(f))
	f.Add(img)
	gz, _ := appended(f, gzipBytes(f, baseArchive(f)))
	f.Add(gz)
	zs, _ := appended(f, zstdBytes(f, baseArchive(f)))
	f.Add(zs)
	f.Add(newcRec("x", ModeRegular, 1, 0, 0x7ffffff0, nil)[:110])
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := Limits{MaxDecompressed: 8 << 20, MaxEntries: 10000}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		Walk(bytes.NewReader(b), int64(len(b)), lim, func(e *Entry, data io.Reader) error {
			_, err := io.Copy(io.Discard, data)
			return err
		})
		ih, err := ReadImageHandoff(bytes.NewReader(b), int64(len(b)), lim)
		runtime.ReadMemStats(&after)
		if err == nil && ih.Handoff == nil {
			t.Fatal("nil handoff without error")
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > uint64(64<<20+100*len(b)) {
			t.Fatalf("allocated %d bytes for %d input bytes", d, len(b))
		}
	})
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r io.ReaderAt
	n int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// TestWalkSkipsPlainFileData: walking a plain archive reads its headers, not the data of
// files the callback leaves unread (the handoff-in-initrd check of a large initrd), and
// data the callback does read is still right.
func TestWalkSkipsPlainFileData(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	var img []byte
	img = append(img, rec("boot", ModeDir|0o755, nil)...)
	img = append(img, rec("boot/vmlinuz", ModeRegular|0o644, big)...)
	img = append(img, rec("imakexec", ModeDir|0o700, nil)...)
	img = append(img, trailer()...)
	img = append(img, make([]byte, 8)...) // NUL padding before the next archive
	img = append(img, rec("etc/big", ModeRegular|0o644, big)...)
	img = append(img, trailer()...)

	for _, readData := range []bool{false, true} {
		c := &countingReaderAt{r: bytes.NewReader(img)}
		var names []string
		segs, err := Walk(c, int64(len(img)), Limits{}, func(e *Entry, data io.Reader) error {
			names = append(names, e.Name)
			if readData && e.Name == "etc/big" {
				b, err := io.ReadAll(data)
				if err != nil || !bytes.Equal(b, big) {
					return fmt.Errorf("data of %s: %d bytes, %v", e.Name, len(b), err)
				}
			}
			return nil
		})
		if err != nil || len(segs) != 2 || fmt.Sprint(names) != "[boot boot/vmlinuz imakexec etc/big]" {
			t.Fatalf("readData=%v: %v %+v %q", readData, err, segs, names)
		}
		limit := int64(512 << 10)
		if readData {
			limit += int64(len(big))
		}
		if c.n > limit {
			t.Errorf("readData=%v: read %d bytes of a %d-byte image (limit %d)", readData, c.n, len(img), limit)
		}
	}
	// A file whose data runs past the end is still an error, not a skip.
	trunc := img[:len(img)-len(trailer())-1000]
	if _, err := Walk(bytes.NewReader(trunc), int64(len(trunc)), Limits{}, nil); !errors.Is(err, ErrLimit) && !errors.Is(err, ErrFormat) {
		t.Errorf("truncated image: %v", err)
	}
}
