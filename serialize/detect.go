package serialize

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"regexp"
)

// Format is one of the kernel's list formats.
type Format int

const (
	FormatAuto Format = iota
	FormatBinary
	FormatASCII
	FormatKexec
)

func (f Format) String() string {
	switch f {
	case FormatBinary:
		return "binary"
	case FormatASCII:
		return "ascii"
	case FormatKexec:
		return "kexec"
	}
	return "auto"
}

// ParseFormat parses "auto", "binary", "ascii" or "kexec".
func ParseFormatName(s string) (Format, error) {
	switch s {
	case "auto", "":
		return FormatAuto, nil
	case "binary":
		return FormatBinary, nil
	case "ascii":
		return FormatASCII, nil
	case "kexec":
		return FormatKexec, nil
	}
	return 0, fmt.Errorf("unknown format %q (want auto, binary, ascii or kexec)", s)
}

// Detected describes a list found by Detect.
type Detected struct {
	Format     Format
	Order      ByteOrder
	DigestSize int // of the binary list; 20 for kexec; 0 for ascii (known after the first line)
}

var asciiLine = regexp.MustCompile(`^ ?[0-9]{1,2} [0-9a-f]{40,128} [!-~]+( |\n|$)`)

// Detect guesses the format, byte order and digest size from the start of a list. An empty
// input is reported as an empty binary list.
func Detect(peek []byte) (Detected, error) {
	if len(peek) == 0 {
		return Detected{Format: FormatBinary, Order: binary.LittleEndian, DigestSize: SHA1Size}, nil
	}
	for _, order := range []ByteOrder{binary.LittleEndian, binary.BigEndian} {
		if len(peek) >= KexecHeaderSize {
			if _, err := ParseKexecHeader(peek, order); err == nil && plausibleRecord(peek[KexecHeaderSize:], order, SHA1Size) {
				return Detected{Format: FormatKexec, Order: order, DigestSize: SHA1Size}, nil
			}
		}
	}
	if asciiLine.Match(peek) {
		return Detected{Format: FormatASCII, Order: binary.LittleEndian}, nil
	}
	for _, order := range []ByteOrder{binary.LittleEndian, binary.BigEndian} {
		for _, ds := range []int{20, 32, 48, 64} {
			if plausibleRecord(peek, order, ds) {
				return Detected{Format: FormatBinary, Order: order, DigestSize: ds}, nil
			}
		}
	}
	return Detected{}, fmt.Errorf("%w: not an IMA binary list, ASCII list or kexec buffer", ErrFormat)
}

// plausibleRecord reports whether b starts with a record header of this digest size: a PCR
// below 24 and a known template name of sane length.
func plausibleRecord(b []byte, order ByteOrder, ds int) bool {
	if len(b) < 4+ds+4 {
		return false
	}
	if order.Uint32(b) >= MaxPCR {
		return false
	}
	n := order.Uint32(b[4+ds:])
	if n == 0 || n > MaxTemplateNameLen || len(b) < 4+ds+4+int(n) {
		return false
	}
	name := b[4+ds+4 : 4+ds+4+int(n)]
	if checkTemplateName(name) != nil {
		return false
	}
	_, err := LookupTemplate(string(name))
	return err == nil
}

// Open detects the format of r (unless f says it) and returns a record source over it. For
// binary lists digestSize may be given (e.g. from a file name); 0 detects it.
func Open(r io.Reader, f Format, digestSize int) (Source, Detected, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	peek, err := br.Peek(4096)
	if err != nil && err != io.EOF && err != bufio.ErrBufferFull {
		return nil, Detected{}, err
	}
	d := Detected{Format: f, Order: binary.LittleEndian, DigestSize: digestSize}
	if f == FormatAuto || (f == FormatBinary && digestSize == 0) || f == FormatKexec {
		got, derr := Detect(peek)
		switch {
		case derr != nil && f == FormatAuto:
			return nil, d, derr
		case derr == nil && (f == FormatAuto || got.Format == f):
			d = got
			if digestSize != 0 && d.Format == FormatBinary {
				d.DigestSize = digestSize
			}
		}
	}
	if d.DigestSize == 0 && d.Format == FormatBinary {
		d.DigestSize = SHA1Size
	}
	switch d.Format {
	case FormatBinary:
		return NewBinaryReader(br, d.Order, d.DigestSize), d, nil
	case FormatASCII:
		return NewASCIIReader(br, d.Order), d, nil
	case FormatKexec:
		kr, err := NewKexecReader(br, d.Order)
		if err != nil {
			return nil, d, err
		}
		return kr, d, nil
	}
	return nil, d, fmt.Errorf("%w: format %v", ErrFormat, d.Format)
}
