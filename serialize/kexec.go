package serialize

import (
	"errors"
	"fmt"
	"io"
)

// Kexec handover buffer (struct ima_kexec_hdr, ima_dump_measurement_list; docs/kernel.md,
// "kexec: what the next kernel gets"): a 24-byte header, then records exactly as in the
// SHA1 binary list.
const (
	KexecHeaderSize = 24
	KexecVersion    = 1
)

// KexecHeader is struct ima_kexec_hdr.
type KexecHeader struct {
	Version    uint16
	BufferSize uint64 // bytes used, header included
	Count      uint64 // records that follow
}

// AppendKexecHeader appends the 24-byte header.
func AppendKexecHeader(b []byte, h KexecHeader, order ByteOrder) []byte {
	b = order.AppendUint16(b, h.Version)
	b = order.AppendUint16(b, 0)
	b = order.AppendUint32(b, 0)
	b = order.AppendUint64(b, h.BufferSize)
	return order.AppendUint64(b, h.Count)
}

// ParseKexecHeader decodes and checks a header the way ima_restore_measurement_list does
// (version 1), plus the checks the kernel omits: reserved fields zero and a buffer size that
// covers the header.
func ParseKexecHeader(b []byte, order ByteOrder) (KexecHeader, error) {
	if len(b) < KexecHeaderSize {
		return KexecHeader{}, fmt.Errorf("%w: kexec header: %d of %d bytes", ErrTruncated, len(b), KexecHeaderSize)
	}
	h := KexecHeader{Version: order.Uint16(b), BufferSize: order.Uint64(b[8:]), Count: order.Uint64(b[16:])}
	if h.Version != KexecVersion {
		return h, fmt.Errorf("%w: kexec header version %d (want %d)", ErrFormat, h.Version, KexecVersion)
	}
	if order.Uint16(b[2:]) != 0 || order.Uint32(b[4:]) != 0 {
		return h, fmt.Errorf("%w: kexec header reserved fields are not zero", ErrFormat)
	}
	if h.BufferSize < KexecHeaderSize {
		return h, fmt.Errorf("%w: kexec buffer size %d is smaller than its header", ErrFormat, h.BufferSize)
	}
	if h.Count > (h.BufferSize-KexecHeaderSize)/minRecordSize {
		return h, fmt.Errorf("%w: kexec header claims %d records in %d bytes", ErrFormat, h.Count, h.BufferSize)
	}
	if h.Count == 0 && h.BufferSize != KexecHeaderSize {
		return h, fmt.Errorf("%w: kexec header claims 0 records in %d bytes", ErrFormat, h.BufferSize)
	}
	return h, nil
}

// minRecordSize is the smallest SHA1 record: pcr, digest, name length, 1-byte name, data length.
const minRecordSize = 4 + SHA1Size + 4 + 1 + 4

// KexecReader reads a kexec handover buffer.
type KexecReader struct {
	Header KexecHeader
	br     *BinaryReader
	order  ByteOrder
}

// NewKexecReader reads and checks the header. Records are then read with Next.
func NewKexecReader(r io.Reader, order ByteOrder) (*KexecReader, error) {
	br := NewBinaryReader(r, order, SHA1Size)
	var hdr [KexecHeaderSize]byte
	if err := br.full(hdr[:], "kexec header"); err != nil {
		return nil, &ParseError{Offset: 0, Record: 0, Err: err}
	}
	h, err := ParseKexecHeader(hdr[:], order)
	if err != nil {
		return nil, &ParseError{Offset: 0, Record: 0, Err: err}
	}
	return &KexecReader{Header: h, br: br, order: order}, nil
}

// Offset is the number of bytes consumed so far, header included.
func (kr *KexecReader) Offset() int64 { return kr.br.off }

// Next returns the next record, or io.EOF after Header.Count records. As in the kernel, the
// last record must end exactly at Header.BufferSize. Bytes after BufferSize (page padding)
// are not read.
func (kr *KexecReader) Next() (*Record, error) {
	if uint64(kr.br.n) == kr.Header.Count {
		if uint64(kr.br.off) != kr.Header.BufferSize {
			return nil, &ParseError{Offset: kr.br.off, Record: kr.br.n,
				Err: fmt.Errorf("%w: %d records end at byte %d, header says %d", ErrFormat, kr.br.n, kr.br.off, kr.Header.BufferSize)}
		}
		return nil, io.EOF
	}
	if uint64(kr.br.off) >= kr.Header.BufferSize {
		return nil, &ParseError{Offset: kr.br.off, Record: kr.br.n,
			Err: fmt.Errorf("%w: buffer size %d reached after %d of %d records", ErrTruncated, kr.Header.BufferSize, kr.br.n, kr.Header.Count)}
	}
	rec, err := kr.br.Next()
	if errors.Is(err, io.EOF) {
		return nil, &ParseError{Offset: kr.br.off, Record: kr.br.n,
			Err: fmt.Errorf("%w: input ends after %d of %d records", ErrTruncated, kr.br.n, kr.Header.Count)}
	}
	if err != nil {
		return nil, err
	}
	if uint64(kr.br.off) > kr.Header.BufferSize {
		return nil, &ParseError{Offset: kr.br.off, Record: kr.br.n - 1,
			Err: fmt.Errorf("%w: record ends at byte %d, past buffer size %d", ErrFormat, kr.br.off, kr.Header.BufferSize)}
	}
	return rec, nil
}

// KexecWriter writes a kexec handover buffer to a seekable writer: a placeholder header,
// then records; Close seeks back and writes the real header.
type KexecWriter struct {
	w     io.WriteSeeker
	order ByteOrder
	dg    *Digester
	start int64
	count uint64
	size  uint64
	buf   []byte
	err   error
}

// NewKexecWriter starts a buffer at the current position of w.
func NewKexecWriter(w io.WriteSeeker, order ByteOrder, dg *Digester) (*KexecWriter, error) {
	if dg == nil {
		dg = NewDigester()
	}
	start, err := w.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("kexec writer: %w", err)
	}
	kw := &KexecWriter{w: w, order: order, dg: dg, start: start, size: KexecHeaderSize}
	if _, err := w.Write(AppendKexecHeader(nil, KexecHeader{Version: KexecVersion, BufferSize: KexecHeaderSize}, order)); err != nil {
		return nil, fmt.Errorf("kexec writer: %w", err)
	}
	return kw, nil
}

// Write appends one record with its SHA1 template digest (Record.Digest when it is 20
// bytes, else computed).
func (kw *KexecWriter) Write(rec *Record) error {
	if kw.err != nil {
		return kw.err
	}
	b, err := AppendKexecRecord(kw.buf[:0], rec, kw.dg, kw.order)
	if err != nil {
		return err
	}
	kw.buf = b
	if _, err := kw.w.Write(b); err != nil {
		kw.err = err
		return err
	}
	kw.count++
	kw.size += uint64(len(b))
	return nil
}

// Count and Size report what was written so far (Size includes the header).
func (kw *KexecWriter) Count() uint64 { return kw.count }
func (kw *KexecWriter) Size() uint64  { return kw.size }

// Close writes the final header and leaves w positioned at the end of the buffer.
func (kw *KexecWriter) Close() error {
	if kw.err != nil {
		return kw.err
	}
	if _, err := kw.w.Seek(kw.start, io.SeekStart); err != nil {
		return err
	}
	if _, err := kw.w.Write(AppendKexecHeader(nil, KexecHeader{Version: KexecVersion, BufferSize: kw.size, Count: kw.count}, kw.order)); err != nil {
		return err
	}
	_, err := kw.w.Seek(kw.start+int64(kw.size), io.SeekStart)
	return err
}

// AppendKexecRecord appends rec as a SHA1 record: Record.Digest when it is 20 bytes, else
// the computed SHA1 template digest (zero for violations).
func AppendKexecRecord(b []byte, rec *Record, dg *Digester, order ByteOrder) ([]byte, error) {
	digest := rec.Digest
	var d [SHA1Size]byte
	if len(digest) != SHA1Size {
		var err error
		if d, err = dg.SHA1Digest(rec); err != nil {
			return b, err
		}
		digest = d[:]
	}
	return appendRecord(b, rec, digest, order)
}
