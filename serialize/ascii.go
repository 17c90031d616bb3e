package serialize

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ASCIIWriter writes the ASCII measurement list byte for byte as the kernel's
// ima_ascii_measurements_show does (docs/kernel.md, "The ASCII list"): "%2d " PCR, the bank's template digest in hex,
// the template name, then for every field a space and its rendering, then "\n".
type ASCIIWriter struct {
	w     *bufio.Writer
	order ByteOrder
	bank  Bank
	dg    *Digester
	dig   [64]byte
	line  []byte
	flds  []Field // reused by every Write
	// fmts are the renderings of the fields of template fmtOf (knownFields), looked up
	// once per template rather than once per field of every record.
	fmts  []fieldFormat
	fmtOf string
	// Recompute: compute digests for the bank instead of trusting Record.Digest.
	Recompute bool
}

// NewASCIIWriter writes lines with template digests of the given bank.
func NewASCIIWriter(w io.Writer, order ByteOrder, bank Bank, dg *Digester) *ASCIIWriter {
	if dg == nil {
		dg = NewDigester()
	}
	return &ASCIIWriter{w: bufio.NewWriterSize(w, 64<<10), order: order, bank: bank, dg: dg}
}

// Write writes one record's line. Templates whose fields do not parse are an error: the
// kernel never shows them.
func (aw *ASCIIWriter) Write(rec *Record) error {
	digest := rec.Digest
	if aw.Recompute || len(digest) != aw.bank.Size {
		if err := aw.dg.TemplateDigest(aw.dig[:], rec, &aw.bank); err != nil {
			return err
		}
		digest = aw.dig[:aw.bank.Size]
	}
	fields, err := appendFields(aw.flds, rec, aw.order)
	if err != nil {
		return err
	}
	aw.flds = fields
	b := aw.line[:0]
	if rec.PCR < 10 {
		b = append(b, ' ')
	}
	b = strconv.AppendUint(b, uint64(rec.PCR), 10)
	b = append(b, ' ')
	b = hex.AppendEncode(b, digest)
	b = append(b, ' ')
	b = append(b, rec.Template...)
	if rec.Template != aw.fmtOf || len(aw.fmts) != len(fields) {
		aw.fmts = aw.fmts[:0]
		for _, f := range fields {
			aw.fmts = append(aw.fmts, knownFields[f.ID])
		}
		aw.fmtOf = rec.Template
	}
	for i, f := range fields {
		b = append(b, ' ')
		b = appendFieldASCII(b, f.Data, aw.fmts[i], aw.order)
	}
	b = append(b, '\n')
	aw.line = b
	_, err = aw.w.Write(b)
	return err
}

// Flush writes buffered data.
func (aw *ASCIIWriter) Flush() error { return aw.w.Flush() }

// appendFieldASCII renders one field (ima_template_lib.c ima_show_template_data_ascii).
func appendFieldASCII(b []byte, v []byte, format fieldFormat, order ByteOrder) []byte {
	switch format {
	case fmtDigestAlgo:
		if len(v) == 0 {
			return b
		}
		// strrchr(data, ':') on the C string, print the string, skip ':' and '\0'.
		s := v
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		c := bytes.LastIndexByte(s, ':')
		if c < 0 {
			return hex.AppendEncode(b, v)
		}
		if c > 0 {
			b = append(b, s...)
		}
		if c+2 <= len(v) {
			return hex.AppendEncode(b, v[c+2:])
		}
		return b
	case fmtString:
		if i := bytes.IndexByte(v, 0); i >= 0 {
			v = v[:i]
		}
		return append(b, v...)
	case fmtUint:
		switch len(v) {
		case 1:
			return strconv.AppendUint(b, uint64(v[0]), 10)
		case 2:
			return strconv.AppendUint(b, uint64(order.Uint16(v)), 10)
		case 4:
			return strconv.AppendUint(b, uint64(order.Uint32(v)), 10)
		case 8:
			return strconv.AppendUint(b, order.Uint64(v), 10)
		}
		return b
	default:
		return hex.AppendEncode(b, v)
	}
}

// ASCIIReader parses the ASCII list. It is best effort, as the format allows no better
// (docs/kernel.md, "The ASCII list"): the kernel prints names raw, so a name holding a newline or, in templates with
// several string fields, a space cannot be told apart from the separators. Use the binary
// list for anything that is verified. Each line is turned back into template data; for the
// integer fields the kernel's widths are assumed (iuid, igid: 4 bytes; imode: 2 bytes).
type ASCIIReader struct {
	s     *bufio.Scanner
	order ByteOrder
	bank  int // digest size; 0 until the first line
	line  int
	off   int64
	rec   Record
}

// NewASCIIReader reads lines; records get the byte order given for their template data.
func NewASCIIReader(r io.Reader, order ByteOrder) *ASCIIReader {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 64<<10), 2*MaxTemplateDataLen+1024)
	return &ASCIIReader{s: s, order: order}
}

// DigestSize is the size of the digests seen (0 before the first record).
func (ar *ASCIIReader) DigestSize() int { return ar.bank }

// Next returns the next record, or io.EOF.
func (ar *ASCIIReader) Next() (*Record, error) {
	for ar.s.Scan() {
		line := ar.s.Bytes()
		start := ar.off
		ar.off += int64(len(line)) + 1
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := ar.parse(line); err != nil {
			return nil, &ParseError{Offset: start, Record: ar.line, Err: err}
		}
		ar.line++
		return &ar.rec, nil
	}
	if err := ar.s.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("%w: line longer than %d bytes", ErrLimit, 2*MaxTemplateDataLen)
		}
		return nil, &ParseError{Offset: ar.off, Record: ar.line, Err: err}
	}
	return nil, io.EOF
}

func (ar *ASCIIReader) parse(line []byte) error {
	s := string(line)
	pcrStr, rest, ok := strings.Cut(strings.TrimLeft(s, " "), " ")
	if !ok {
		return fmt.Errorf("%w: line has no digest", ErrFormat)
	}
	pcr, err := strconv.ParseUint(pcrStr, 10, 32)
	if err != nil || pcr >= MaxPCR {
		return fmt.Errorf("%w: pcr %q", ErrFormat, pcrStr)
	}
	digHex, rest, ok := strings.Cut(rest, " ")
	if !ok {
		return fmt.Errorf("%w: line has no template name", ErrFormat)
	}
	digest, err := hex.DecodeString(digHex)
	if err != nil || len(digest) < SHA1Size || len(digest) > 64 {
		return fmt.Errorf("%w: template digest %q", ErrFormat, digHex)
	}
	if ar.bank == 0 {
		ar.bank = len(digest)
	} else if ar.bank != len(digest) {
		return fmt.Errorf("%w: digest of %d bytes in a list of %d-byte digests (banks mixed?)", ErrFormat, len(digest), ar.bank)
	}
	name, rest, _ := strings.Cut(rest, " ")
	t, err := LookupTemplate(name)
	if err != nil {
		return err
	}
	var parts []string
	if len(t.Fields) > 0 {
		parts = strings.SplitN(rest, " ", len(t.Fields))
	}
	if len(parts) != len(t.Fields) {
		return fmt.Errorf("%w: template %s has %d fields, line has %d", ErrFormat, name, len(t.Fields), len(parts))
	}
	fields := make([]Field, len(parts))
	for i, id := range t.Fields {
		v, err := parseFieldASCII(id, parts[i], name == TemplateIMA, ar.order)
		if err != nil {
			return fmt.Errorf("field %d (%s): %w", i, id, err)
		}
		fields[i] = Field{id, v}
	}
	data, err := BuildData(name, fields, ar.order)
	if err != nil {
		return err
	}
	ar.rec = Record{PCR: uint32(pcr), Template: name, Data: data, Digest: digest}
	return nil
}

func parseFieldASCII(id, s string, imaTemplate bool, order ByteOrder) ([]byte, error) {
	switch knownFields[id] {
	case fmtDigestAlgo:
		if s == "" {
			return nil, nil
		}
		c := strings.LastIndexByte(s, ':')
		if c < 0 {
			return nil, fmt.Errorf("%w: %q has no algorithm prefix", ErrFormat, s)
		}
		d, err := hex.DecodeString(s[c+1:])
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		return DigestField(s[:c], d), nil
	case fmtString:
		if imaTemplate {
			return []byte(s), nil // the ima template's n has no NUL in the binary form
		}
		if s == "" && id != FieldNNG {
			return nil, nil
		}
		return NameField(s), nil
	case fmtUint:
		if s == "" {
			return nil, nil
		}
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		if id == FieldIMode {
			if v > 0xFFFF {
				return nil, fmt.Errorf("%w: imode %d", ErrFormat, v)
			}
			return order.AppendUint16(nil, uint16(v)), nil
		}
		return order.AppendUint32(nil, uint32(v)), nil
	default:
		d, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrFormat, err)
		}
		return d, nil
	}
}
