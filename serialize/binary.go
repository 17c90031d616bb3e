package serialize

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// chunk is the largest allocation made on the word of an untrusted length field alone;
// larger declared sizes grow the buffer only as bytes actually arrive (as
// internal/saferio does).
const chunk = 64 << 10

// BinaryReader reads the binary measurement list (ima_measurements_show; docs/kernel.md, "The binary list"): records back to back, no
// header. The digest size depends on the file: 20 for the legacy and `_sha1` lists, the
// bank size for `_<algo>` lists.
type BinaryReader struct {
	r          *bufio.Reader
	order      ByteOrder
	digestSize int
	off        int64
	n          int
	rec        Record
	digest     []byte
	data       []byte
	name       []byte
	hdr        [4]byte
	// nameLimit is the longest template name accepted.
	nameLimit int
	// fieldByField turns readBuffered off (tests compare the two paths).
	fieldByField bool
}

// NewBinaryReader reads a binary list with digests of digestSize bytes in the given byte
// order (binary.LittleEndian for x86/arm64 hosts and canonical lists).
func NewBinaryReader(r io.Reader, order ByteOrder, digestSize int) *BinaryReader {
	br, ok := r.(*bufio.Reader)
	if !ok || br.Size() < 64<<10 {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &BinaryReader{r: br, order: order, digestSize: digestSize, digest: make([]byte, digestSize), nameLimit: MaxTemplateNameLen}
}

// Offset is the number of bytes consumed so far.
func (br *BinaryReader) Offset() int64 { return br.off }

// Count is the number of records returned so far.
func (br *BinaryReader) Count() int { return br.n }

// Next returns the next record, or io.EOF at a clean end. The record and its slices are
// valid until the next call. Errors are *ParseError with the offset and record index.
func (br *BinaryReader) Next() (*Record, error) {
	start := br.off
	if _, err := br.r.Peek(1); err == io.EOF {
		return nil, io.EOF
	}
	if err := br.readRecord(&br.rec); err != nil {
		return nil, &ParseError{Offset: start, Record: br.n, Err: err}
	}
	br.n++
	return &br.rec, nil
}

func (br *BinaryReader) full(p []byte, what string) error {
	n, err := io.ReadFull(br.r, p)
	br.off += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %s: got %d of %d bytes", ErrTruncated, what, n, len(p))
		}
		return fmt.Errorf("read %s: %w", what, err)
	}
	return nil
}

func (br *BinaryReader) u32(what string) (uint32, error) {
	if err := br.full(br.hdr[:], what); err != nil {
		return 0, err
	}
	return br.order.Uint32(br.hdr[:]), nil
}

// readN reads n bytes into buf (reused), growing it by at most chunk bytes ahead of the data
// actually read, so a hostile length costs an error rather than memory.
func (br *BinaryReader) readN(buf []byte, n int, what string) ([]byte, error) {
	buf = buf[:0]
	for len(buf) < n {
		want := min(n-len(buf), chunk)
		if cap(buf)-len(buf) < want {
			nb := make([]byte, len(buf), len(buf)+max(want, min(n, 2*cap(buf))-len(buf)))
			copy(nb, buf)
			buf = nb
		}
		if err := br.full(buf[len(buf):len(buf)+want], what); err != nil {
			return buf, err
		}
		buf = buf[:len(buf)+want]
	}
	return buf, nil
}

// readBuffered is readRecord for a record that lies whole in the reader's buffer and
// passes every check: it takes the fields from one Peek instead of a read per field. For
// anything else (a record longer than the buffer, a short input, a value over a limit) it
// consumes nothing and returns false, and readRecord reads the record field by field and
// names what is wrong.
func (br *BinaryReader) readBuffered(rec *Record) bool {
	ds := br.digestSize
	fixed := 4 + ds + 4
	p, err := br.r.Peek(fixed)
	if err != nil {
		return false
	}
	pcr, nlen := br.order.Uint32(p), br.order.Uint32(p[4+ds:])
	if pcr >= MaxPCR || nlen == 0 || int64(nlen) > int64(br.nameLimit) {
		return false
	}
	// After the name: a data length (4 bytes), or for `ima` the 20-byte digest and the
	// event name length. Every Peek asks only for bytes that the field-by-field read would
	// read too, so a reader on a stream never waits for bytes past the record.
	lenOff := fixed + int(nlen)
	if p, err = br.r.Peek(lenOff + 4); err != nil {
		return false
	}
	var dataOff, dataLen int
	if string(p[fixed:lenOff]) == TemplateIMA {
		if p, err = br.r.Peek(lenOff + SHA1Size + 4); err != nil {
			return false
		}
		n := br.order.Uint32(p[lenOff+SHA1Size:])
		if n > MaxEventNameLen {
			return false
		}
		dataOff, dataLen = lenOff, SHA1Size+4+int(n)
	} else {
		n := br.order.Uint32(p[lenOff:])
		if n > MaxTemplateDataLen {
			return false
		}
		dataOff, dataLen = lenOff+4, int(n)
	}
	total := dataOff + dataLen
	if total > br.r.Size() {
		return false
	}
	if p, err = br.r.Peek(total); err != nil {
		return false
	}
	name := p[fixed:lenOff]
	if checkTemplateName(name) != nil {
		return false
	}
	copy(br.digest, p[4:4+ds])
	br.name = append(br.name[:0], name...)
	if string(br.name) != rec.Template {
		rec.Template = string(br.name)
	}
	br.data = append(br.data[:0], p[dataOff:total]...)
	br.r.Discard(total)
	br.off += int64(total)
	rec.PCR = pcr
	rec.Digest = br.digest
	rec.Data = br.data
	return true
}

func (br *BinaryReader) readRecord(rec *Record) error {
	if !br.fieldByField && br.readBuffered(rec) {
		return nil
	}
	pcr, err := br.u32("pcr")
	if err != nil {
		return err
	}
	if pcr >= MaxPCR {
		return fmt.Errorf("%w: pcr %d (max %d)", ErrFormat, pcr, MaxPCR-1)
	}
	if err := br.full(br.digest, "template digest"); err != nil {
		return err
	}
	nlen, err := br.u32("template name length")
	if err != nil {
		return err
	}
	if nlen == 0 || int64(nlen) > int64(br.nameLimit) {
		return fmt.Errorf("%w: template name length %d (allowed 1..%d)", ErrLimit, nlen, br.nameLimit)
	}
	if br.name, err = br.readN(br.name, int(nlen), "template name"); err != nil {
		return err
	}
	if err := checkTemplateName(br.name); err != nil {
		return err
	}
	if string(br.name) != rec.Template { // keep the old string: no allocation per record
		rec.Template = string(br.name)
	}
	if rec.Template == TemplateIMA {
		// d (20 bytes) ‖ u32 name length ‖ name, with no data-length field (docs/kernel.md, "The binary list").
		br.data = append(br.data[:0], make([]byte, SHA1Size+4)...)
		if err := br.full(br.data, "ima template data"); err != nil {
			return err
		}
		n := br.order.Uint32(br.data[SHA1Size:])
		if n > MaxEventNameLen {
			return fmt.Errorf("%w: ima template event name length %d (max %d)", ErrLimit, n, MaxEventNameLen)
		}
		name, err := br.readN(nil, int(n), "ima template event name")
		if err != nil {
			return err
		}
		br.data = append(br.data, name...)
	} else {
		dlen, err := br.u32("template data length")
		if err != nil {
			return err
		}
		if dlen > MaxTemplateDataLen {
			return fmt.Errorf("%w: template data length %d (max %d)", ErrLimit, dlen, MaxTemplateDataLen)
		}
		if br.data, err = br.readN(br.data, int(dlen), "template data"); err != nil {
			return err
		}
	}
	rec.PCR = pcr
	rec.Digest = br.digest
	rec.Data = br.data
	return nil
}

// checkTemplateName refuses bytes no kernel writes in a template name: template names and
// format strings are printable ASCII without spaces.
func checkTemplateName(name []byte) error {
	for _, c := range name {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("%w: template name %q has a byte 0x%02x that no kernel writes", ErrFormat, name, c)
		}
	}
	return nil
}

// BinaryWriter writes the binary measurement list for one bank.
type BinaryWriter struct {
	w     *bufio.Writer
	order ByteOrder
	bank  Bank
	dg    *Digester
	buf   []byte
	dig   [64]byte
	// Recompute makes the writer compute every digest for its bank instead of using
	// Record.Digest when it has the bank's size.
	Recompute bool
}

// NewBinaryWriter writes records with template digests of the given bank. The Digester
// decides the extend scheme for computed digests; nil means NewDigester().
func NewBinaryWriter(w io.Writer, order ByteOrder, bank Bank, dg *Digester) *BinaryWriter {
	if dg == nil {
		dg = NewDigester()
	}
	return &BinaryWriter{w: bufio.NewWriterSize(w, 64<<10), order: order, bank: bank, dg: dg}
}

// Write writes one record. Its digest is Record.Digest when that has the bank's size and
// Recompute is off; otherwise it is computed (zero for a violation).
func (bw *BinaryWriter) Write(rec *Record) error {
	digest := rec.Digest
	if bw.Recompute || len(digest) != bw.bank.Size {
		if err := bw.dg.TemplateDigest(bw.dig[:], rec, &bw.bank); err != nil {
			return err
		}
		digest = bw.dig[:bw.bank.Size]
	}
	b, err := appendRecord(bw.buf[:0], rec, digest, bw.order)
	if err != nil {
		return err
	}
	bw.buf = b
	_, err = bw.w.Write(b)
	return err
}

// Flush writes buffered data to the underlying writer.
func (bw *BinaryWriter) Flush() error { return bw.w.Flush() }

// appendRecord appends rec in binary-list form with the given digest.
func appendRecord(b []byte, rec *Record, digest []byte, order ByteOrder) ([]byte, error) {
	if rec.PCR >= MaxPCR {
		return b, fmt.Errorf("%w: pcr %d", ErrFormat, rec.PCR)
	}
	if len(rec.Template) == 0 || len(rec.Template) > MaxTemplateNameLen {
		return b, fmt.Errorf("%w: template name length %d", ErrLimit, len(rec.Template))
	}
	b = order.AppendUint32(b, rec.PCR)
	b = append(b, digest...)
	b = order.AppendUint32(b, uint32(len(rec.Template)))
	b = append(b, rec.Template...)
	if rec.Template == TemplateIMA {
		if _, _, err := splitIMAData(rec.Data, order); err != nil {
			return b, err
		}
	} else {
		if len(rec.Data) > MaxTemplateDataLen {
			return b, fmt.Errorf("%w: template data length %d", ErrLimit, len(rec.Data))
		}
		b = order.AppendUint32(b, uint32(len(rec.Data)))
	}
	return append(b, rec.Data...), nil
}

// RecordSize is the size of rec in a binary list with digestSize-byte digests (and in the
// kexec buffer with digestSize 20).
func RecordSize(rec *Record, digestSize int) int {
	n := 4 + digestSize + 4 + len(rec.Template) + len(rec.Data)
	if rec.Template != TemplateIMA {
		n += 4
	}
	return n
}
