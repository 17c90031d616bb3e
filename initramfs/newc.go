package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// This file is our own bounded reader of initramfs images: concatenated newc cpio archives,
// NUL padding between them, and compressed segments, walked the way the kernel's
// unpack_to_rootfs (init/initramfs.c) walks them. u-root's pkg/cpio reader allocates the
// header's name length before any check (a 110-byte header can make it allocate 2 GiB),
// so it never sees untrusted bytes; it is used only to write.
//
// Kernel rules mirrored here:
//   - a top-level archive starts with '0' at a 4-aligned absolute offset; NUL bytes between
//     archives are skipped; anything else is a compressed segment, and after it the offset
//     stays absolute (this_header = saved_offset + my_inptr);
//   - inside a decompressed segment, alignment is relative to the start of the decompressed
//     output, and only archives and NUL padding may follow a trailer ("junk within
//     compressed archive");
//   - headers are 110 ASCII bytes, magic 070701 (or 070702 with checksum), header+name and
//     data each padded to 4 bytes; "TRAILER!!!" ends an archive.

// Errors of the reader. Every error from Walk wraps one of these and, for format errors, is
// a *FormatError with the byte offset.
var (
	// ErrFormat: the bytes are not a well-formed initramfs image.
	ErrFormat = errors.New("malformed initramfs archive")
	// ErrLimit: a declared size or count exceeds the reader's limits or the input.
	ErrLimit = errors.New("initramfs archive exceeds a limit")
	// ErrUnsupportedCompression: a segment is compressed with a method this reader does not
	// decode (the kernel may well accept it).
	ErrUnsupportedCompression = errors.New("unsupported initramfs compression")
)

// FormatError locates a reader error: which segment, which stream offset.
type FormatError struct {
	Segment     int    // 0-based top-level segment (archive or compressed block)
	Compression string // "" for a plain archive, else the method, e.g. "gzip"
	Offset      int64  // byte offset in the image, or in the decompressed stream when Compression != ""
	Msg         string
	Err         error // ErrFormat, ErrLimit or ErrUnsupportedCompression
}

func (e *FormatError) Error() string {
	where := fmt.Sprintf("offset %d", e.Offset)
	if e.Compression != "" {
		where = fmt.Sprintf("offset %d of %s-decompressed segment %d", e.Offset, e.Compression, e.Segment)
	}
	return fmt.Sprintf("%v at %s: %s", e.Err, where, e.Msg)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Limits bound what Walk accepts. Zero fields take DefaultLimits' values.
type Limits struct {
	MaxNameLen      int64 // bytes of a name including its NUL (the kernel's PATH_MAX is 4096)
	MaxEntries      int   // records over all segments
	MaxSegments     int   // top-level segments
	MaxDecompressed int64 // bytes of one decompressed segment
	MaxFileSize     int64 // data bytes of one record inside a decompressed segment
}

// DefaultLimits are generous for real initrds and small enough that a hostile image costs
// an error, not memory: nothing is allocated from a header field except a name, which is
// bounded by MaxNameLen.
var DefaultLimits = Limits{
	MaxNameLen:      4096,
	MaxEntries:      1 << 20,
	MaxSegments:     256,
	MaxDecompressed: 4 << 30,
	MaxFileSize:     1 << 31,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxNameLen <= 0 {
		l.MaxNameLen = d.MaxNameLen
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = d.MaxEntries
	}
	if l.MaxSegments <= 0 {
		l.MaxSegments = d.MaxSegments
	}
	if l.MaxDecompressed <= 0 {
		l.MaxDecompressed = d.MaxDecompressed
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = d.MaxFileSize
	}
	return l
}

// File type bits of a newc mode (sys/stat.h).
const (
	ModeTypeMask = 0o170000
	ModeSocket   = 0o140000
	ModeSymlink  = 0o120000
	ModeRegular  = 0o100000
	ModeBlock    = 0o060000
	ModeDir      = 0o040000
	ModeChar     = 0o020000
	ModeFIFO     = 0o010000
)

// Entry is one record's header as read, validated only for well-formedness.
type Entry struct {
	Segment     int    // top-level segment index
	Compression string // "" or the segment's compression method
	Offset      int64  // header offset (image offset, or decompressed offset when compressed)
	Name        string // as in the archive, without the NUL
	Ino         uint32
	Mode        uint32
	UID, GID    uint32
	NLink       uint32
	MTime       uint32
	Size        uint32 // data bytes
	DevMajor    uint32
	DevMinor    uint32
	RDevMajor   uint32
	RDevMinor   uint32
}

// Type returns the file type bits of Mode.
func (e *Entry) Type() uint32 { return e.Mode & ModeTypeMask }

const (
	newcHeaderLen = 110
	trailerName   = "TRAILER!!!"
)

// compression magics as in the kernel's decompress_method (lib/decompress.c).
var compressionMagics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"gzip", []byte{0x1f, 0x9e}},
	{"bzip2", []byte{0x42, 0x5a, 0x68}},
	{"lzma", []byte{0x5d, 0x00, 0x00}},
	{"xz", []byte{0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00}},
	{"lzo", []byte{0x89, 0x4c, 0x5a, 0x4f}},
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
}

// SegmentInfo describes one top-level segment found by Walk.
type SegmentInfo struct {
	Index       int
	Compression string // "" for a plain newc archive
	Start, End  int64  // image offsets (End exclusive); NUL padding before Start is not included
	Entries     int    // records, trailers included
}

// WalkFunc is called for each record. data yields exactly e.Size bytes; the walker discards
// what fn leaves unread. Returning an error stops the walk with that error.
type WalkFunc func(e *Entry, data io.Reader) error

// Walk reads an initramfs image of size bytes from r, segment by segment, calling fn for
// every record (trailers excluded) and returning the top-level segments it found.
// Compressed segments: gzip (single member) and zstd (one frame) are decoded; bzip2, lzma,
// xz, lzo and lz4 are recognised and refused with ErrUnsupportedCompression, because the
// end of such a segment cannot be found without decoding it exactly as the kernel does.
// In plain segments, file data that fn leaves unread is skipped by offset, not read: a
// walk for names costs the headers, not the size of the image.
func Walk(r io.ReaderAt, size int64, lim Limits, fn WalkFunc) ([]SegmentInfo, error) {
	lim = lim.withDefaults()
	w := &walker{lim: lim, fn: fn, ra: r, size: size}
	sr := io.NewSectionReader(r, 0, size)
	top := newStream(sr, size)
	top.seek = sr
	return w.segs, w.top(top)
}

type walker struct {
	lim     Limits
	fn      WalkFunc
	ra      io.ReaderAt
	size    int64
	entries int
	segs    []SegmentInfo
}

// stream is a forward reader that counts consumed bytes and knows how many may follow.
// It implements io.ByteReader so that compress/flate reads from it without read-ahead.
type stream struct {
	br  *bufio.Reader
	pos int64
	max int64 // total bytes the stream may hold
	// seek, when set, is what br reads (from offset 0, the stream's position 0): discard
	// then skips unbuffered bytes by offset instead of reading them, so that walking a
	// plain archive reads its headers, not its file data.
	seek io.ReadSeeker
}

func newStream(r io.Reader, max int64) *stream {
	return &stream{br: bufio.NewReaderSize(r, 64<<10), max: max}
}

func (s *stream) Read(p []byte) (int, error) {
	n, err := s.br.Read(p)
	s.pos += int64(n)
	return n, err
}

func (s *stream) ReadByte() (byte, error) {
	b, err := s.br.ReadByte()
	if err == nil {
		s.pos++
	}
	return b, err
}

func (s *stream) discard(n int64) error {
	if b := int64(s.br.Buffered()); s.seek != nil && n > b && s.pos+n <= s.max {
		if _, err := s.seek.Seek(s.pos+n, io.SeekStart); err != nil {
			return err
		}
		s.br.Reset(s.seek)
		s.pos += n
		return nil
	}
	for n > 0 {
		chunk := n
		if chunk > 1<<30 {
			chunk = 1 << 30
		}
		m, err := s.br.Discard(int(chunk))
		s.pos += int64(m)
		n -= int64(m)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

func (s *stream) remaining() int64 { return s.max - s.pos }

func (w *walker) errf(seg int, comp string, off int64, base error, format string, a ...any) error {
	return &FormatError{Segment: seg, Compression: comp, Offset: off, Msg: fmt.Sprintf(format, a...), Err: base}
}

func (w *walker) top(s *stream) error {
	for {
		b, err := s.br.Peek(1)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read initramfs at offset %d: %w", s.pos, err)
		}
		if b[0] == 0 {
			s.ReadByte()
			continue
		}
		if len(w.segs) >= w.lim.MaxSegments {
			return w.errf(len(w.segs), "", s.pos, ErrLimit, "more than %d segments", w.lim.MaxSegments)
		}
		seg := SegmentInfo{Index: len(w.segs), Start: s.pos}
		if b[0] == '0' && s.pos%4 == 0 {
			n, err := w.archive(s, seg.Index, "")
			seg.Entries = n
			if err != nil {
				return err
			}
			seg.End = s.pos
			w.segs = append(w.segs, seg)
			continue
		}
		head, _ := s.br.Peek(6)
		method := ""
		for _, m := range compressionMagics {
			if bytes.HasPrefix(head, m.magic) {
				method = m.name
				break
			}
		}
		seg.Compression = method
		switch method {
		case "gzip":
			err = w.gzip(s, &seg)
		case "zstd":
			err = w.zstd(s, &seg)
		case "":
			if b[0] == '0' {
				return w.errf(seg.Index, "", s.pos, ErrFormat, "archive starts at an offset that is not 4-byte aligned")
			}
			return w.errf(seg.Index, "", s.pos, ErrFormat, "invalid magic at start of compressed archive (% x)", head)
		default:
			return w.errf(seg.Index, "", s.pos, ErrUnsupportedCompression,
				"%s-compressed segment: imakexec reads gzip and zstd segments only; recompress the initrd with gzip or zstd, or leave it uncompressed", method)
		}
		if err != nil {
			return err
		}
		seg.End = s.pos
		w.segs = append(w.segs, seg)
	}
}

// inner walks a decompressed segment: archives and NUL padding only.
func (w *walker) inner(s *stream, seg *SegmentInfo) error {
	for {
		b, err := s.br.Peek(1)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return w.errf(seg.Index, seg.Compression, s.pos, ErrFormat, "decompress: %v", err)
		}
		switch {
		case b[0] == 0:
			s.ReadByte()
		case b[0] == '0' && s.pos%4 == 0:
			n, err := w.archive(s, seg.Index, seg.Compression)
			seg.Entries += n
			if err != nil {
				return err
			}
		case b[0] == '0':
			return w.errf(seg.Index, seg.Compression, s.pos, ErrFormat, "broken padding")
		default:
			return w.errf(seg.Index, seg.Compression, s.pos, ErrFormat, "junk within compressed archive")
		}
		if s.pos > w.lim.MaxDecompressed {
			return w.errf(seg.Index, seg.Compression, s.pos, ErrLimit, "decompressed segment larger than %d bytes", w.lim.MaxDecompressed)
		}
	}
}

func (w *walker) gzip(s *stream, seg *SegmentInfo) error {
	zr, err := gzip.NewReader(s)
	if err != nil {
		return w.errf(seg.Index, "", seg.Start, ErrFormat, "gzip header: %v", err)
	}
	zr.Multistream(false)
	in := newStream(io.LimitReader(zr, w.lim.MaxDecompressed+1), w.lim.MaxDecompressed)
	if err := w.inner(in, seg); err != nil {
		return err
	}
	// The gzip trailer (CRC, size) is checked when the member's end is read.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return w.errf(seg.Index, "", s.pos, ErrFormat, "gzip: %v", err)
	}
	return nil
}

func (w *walker) zstd(s *stream, seg *SegmentInfo) error {
	flen, err := zstdFrameLen(w.ra, seg.Start, w.size)
	if err != nil {
		return w.errf(seg.Index, "", seg.Start, ErrFormat, "zstd frame: %v", err)
	}
	dec, err := zstd.NewReader(io.NewSectionReader(w.ra, seg.Start, flen),
		zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(uint64(w.lim.MaxDecompressed)), zstd.WithDecoderMaxWindow(128<<20))
	if err != nil {
		return w.errf(seg.Index, "", seg.Start, ErrFormat, "zstd: %v", err)
	}
	defer dec.Close()
	in := newStream(io.LimitReader(dec, w.lim.MaxDecompressed+1), w.lim.MaxDecompressed)
	if err := w.inner(in, seg); err != nil {
		return err
	}
	return s.discard(flen)
}

// archive reads one newc archive up to and including its trailer. It returns the number
// of records read.
func (w *walker) archive(s *stream, seg int, comp string) (int, error) {
	var hdr [newcHeaderLen]byte
	n := 0
	for {
		off := s.pos
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return n, w.errf(seg, comp, off, ErrFormat, "truncated header (%v)", err)
		}
		e, err := parseHeader(hdr[:])
		if err != nil {
			return n, w.errf(seg, comp, off, ErrFormat, "%v", err)
		}
		e.Segment, e.Compression, e.Offset = seg, comp, off
		if w.entries >= w.lim.MaxEntries {
			return n, w.errf(seg, comp, off, ErrLimit, "more than %d records", w.lim.MaxEntries)
		}
		w.entries++
		n++
		nameLen := int64(e.nameSize)
		if nameLen < 2 {
			return n, w.errf(seg, comp, off, ErrFormat, "name size %d", nameLen)
		}
		if nameLen > w.lim.MaxNameLen {
			return n, w.errf(seg, comp, off, ErrLimit, "name size %d exceeds %d", nameLen, w.lim.MaxNameLen)
		}
		namePad := pad4(newcHeaderLen + nameLen)
		if nameLen+namePad > s.remaining() {
			return n, w.errf(seg, comp, off, ErrLimit, "name size %d exceeds the %d bytes left", nameLen, s.remaining())
		}
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(s, name); err != nil {
			return n, w.errf(seg, comp, off, ErrFormat, "truncated name (%v)", err)
		}
		if name[nameLen-1] != 0 || bytes.IndexByte(name[:nameLen-1], 0) >= 0 {
			return n, w.errf(seg, comp, off, ErrFormat, "name is not one NUL-terminated string")
		}
		e.Name = string(name[:nameLen-1])
		if err := s.discard(namePad); err != nil {
			return n, w.errf(seg, comp, off, ErrFormat, "truncated name padding")
		}
		size := int64(e.Size)
		dataPad := pad4(size)
		if size+dataPad > s.remaining() {
			return n, w.errf(seg, comp, off, ErrLimit, "file size %d exceeds the %d bytes left", size, s.remaining())
		}
		if comp != "" && size > w.lim.MaxFileSize {
			return n, w.errf(seg, comp, off, ErrLimit, "file size %d exceeds %d", size, w.lim.MaxFileSize)
		}
		if e.Name == trailerName {
			if err := s.discard(size + dataPad); err != nil {
				return n, w.errf(seg, comp, off, ErrFormat, "truncated trailer")
			}
			return n, nil
		}
		lr := &io.LimitedReader{R: s, N: size}
		if w.fn != nil {
			if err := w.fn(&e.Entry, lr); err != nil {
				return n, err
			}
		}
		if err := s.discard(lr.N + dataPad); err != nil {
			return n, w.errf(seg, comp, off, ErrFormat, "truncated data of %q", e.Name)
		}
	}
}

func pad4(n int64) int64 { return (4 - n%4) % 4 }

type header struct {
	Entry
	nameSize uint32
}

// parseHeader decodes the 110-byte newc header (magic and 13 fields of 8 hex digits).
func parseHeader(b []byte) (header, error) {
	var h header
	magic := string(b[:6])
	if magic != "070701" && magic != "070702" {
		if magic == "070707" {
			return h, errors.New("old binary/odc cpio (070707): the kernel accepts newc only")
		}
		return h, fmt.Errorf("no newc magic (%q)", strings.ToValidUTF8(magic, "?"))
	}
	var f [13]uint32
	for i := range f {
		v, err := hex8(b[6+8*i : 14+8*i])
		if err != nil {
			return h, fmt.Errorf("header field %d: %v", i, err)
		}
		f[i] = v
	}
	h.Ino, h.Mode, h.UID, h.GID, h.NLink, h.MTime, h.Size = f[0], f[1], f[2], f[3], f[4], f[5], f[6]
	h.DevMajor, h.DevMinor, h.RDevMajor, h.RDevMinor, h.nameSize = f[7], f[8], f[9], f[10], f[11]
	return h, nil
}

func hex8(b []byte) (uint32, error) {
	var v uint32
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, fmt.Errorf("not a hex digit: %q", c)
		}
		v = v<<4 | uint32(d)
	}
	return v, nil
}
