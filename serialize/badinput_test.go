package serialize_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/serialize"
)

// record builds one binary SHA1 record by hand.
func record(pcr uint32, digest []byte, name string, data []byte, dataLen uint32) []byte {
	b := le.AppendUint32(nil, pcr)
	b = append(b, digest...)
	b = le.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = le.AppendUint32(b, dataLen)
	return append(b, data...)
}

func readErr(in []byte, ds int) (int, error) {
	br := serialize.NewBinaryReader(bytes.NewReader(in), le, ds)
	n := 0
	for {
		_, err := br.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}

func TestBadBinaryInput(t *testing.T) {
	good := genList(t, 3, listgen.Options{Seed: 9})
	d20 := bytes.Repeat([]byte{1}, 20)
	ngData, _ := serialize.BuildData("ima-ng", []serialize.Field{{ID: "d-ng", Data: serialize.DigestField("sha1", d20)}, {ID: "n-ng", Data: serialize.NameField("/x")}}, le)
	for _, tc := range []struct {
		name    string
		in      []byte
		records int   // records read before the error
		err     error // nil: accepted
		offset  int64 // byte offset in the error, -1: not checked
	}{
		{"zero-length-file", nil, 0, nil, -1},
		{"truncated-in-pcr", good[:len(good)+2-len(good)], 0, serialize.ErrTruncated, 0},
		{"truncated-last-record", good[:len(good)-1], 2, serialize.ErrTruncated, -1},
		{"huge-datalen", record(10, d20, "ima-ng", nil, 0xFFFFFFF0), 0, serialize.ErrLimit, 0},
		{"datalen-beyond-input", record(10, d20, "ima-ng", ngData[:5], 60<<20), 0, serialize.ErrTruncated, 0},
		{"huge-namelen", append(le.AppendUint32(append(le.AppendUint32(nil, 10), d20...), 0x7FFFFFF0), "ima-ng"...), 0, serialize.ErrLimit, 0},
		{"zero-namelen", record(10, d20, "", ngData, uint32(len(ngData))), 0, serialize.ErrLimit, 0},
		{"pcr-out-of-range", record(24, d20, "ima-ng", ngData, uint32(len(ngData))), 0, serialize.ErrFormat, 0},
		{"name-with-nul", record(10, d20, "ima\x00ng", ngData, uint32(len(ngData))), 0, serialize.ErrFormat, 0},
		{"name-with-space", record(10, d20, "ima ng", ngData, uint32(len(ngData))), 0, serialize.ErrFormat, 0},
		// Unknown template names are accepted by the reader (replay needs only the raw
		// data); field parsing refuses them.
		{"unknown-template-accepted", record(10, d20, "ima-future", ngData, uint32(len(ngData))), 1, nil, -1},
		{"sha256-record-in-sha1-list", append(bytes.Clone(good), record(10, bytes.Repeat([]byte{2}, 32), "ima-ng", ngData, uint32(len(ngData)))...), 3, serialize.ErrLimit, int64(len(good))},
		{"ima-template-huge-name", append(append(le.AppendUint32(append(le.AppendUint32(nil, 10), d20...), 3), "ima"...), append(d20, le.AppendUint32(nil, 300)...)...), 0, serialize.ErrLimit, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := readErr(tc.in, 20)
			if n != tc.records {
				t.Errorf("read %d records before stopping, want %d", n, tc.records)
			}
			if tc.err == nil {
				if err != nil {
					t.Fatalf("want acceptance, got %v", err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("want %v, got %v", tc.err, err)
			}
			var pe *serialize.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a ParseError", err)
			}
			if pe.Record != tc.records {
				t.Errorf("error names record %d, want %d", pe.Record, tc.records)
			}
			if tc.offset >= 0 && pe.Offset != tc.offset {
				t.Errorf("error at byte %d, want %d", pe.Offset, tc.offset)
			}
			if !strings.Contains(err.Error(), "at byte") {
				t.Errorf("message %q lacks the byte offset", err)
			}
		})
	}
}

func TestBadFields(t *testing.T) {
	d20 := bytes.Repeat([]byte{1}, 20)
	for _, tc := range []struct {
		name string
		rec  serialize.Record
		err  error
	}{
		{"unknown-template", serialize.Record{Template: "ima-future", Data: nil}, serialize.ErrUnknownTemplate},
		{"field-overruns", serialize.Record{Template: "ima-ng", Data: le.AppendUint32(nil, 100)}, serialize.ErrFormat},
		{"missing-field", serialize.Record{Template: "ima-ng", Data: append(le.AppendUint32(nil, 2), 'a', 'b')}, serialize.ErrTruncated},
		{"trailing-bytes", serialize.Record{Template: "ima-ng", Data: append(append(append(le.AppendUint32(nil, 1), 'a'), le.AppendUint32(nil, 1)...), 'b', 'c')}, serialize.ErrFormat},
		{"ima-short", serialize.Record{Template: "ima", Data: d20[:10]}, serialize.ErrFormat},
	} {
		if _, err := serialize.ParseFields(&tc.rec, le); !errors.Is(err, tc.err) {
			t.Errorf("%s: want %v, got %v", tc.name, tc.err, err)
		}
	}
	// Non-UTF-8 and NUL bytes inside names are data: the kernel writes them raw.
	data, _ := serialize.BuildData("ima-ng", []serialize.Field{{ID: "d-ng", Data: serialize.DigestField("sha1", d20)}, {ID: "n-ng", Data: []byte("/\xff\xfe\x00x\x00")}}, le)
	rec := serialize.Record{PCR: 10, Template: "ima-ng", Data: data}
	if got := serialize.EventName(&rec, le); got != "/\xff\xfe" {
		t.Errorf("event name %q", got)
	}
}

func TestBadKexecInput(t *testing.T) {
	list := genList(t, 4, listgen.Options{Seed: 10})
	hdr := func(size, count uint64) []byte {
		return serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: 1, BufferSize: size, Count: count}, le)
	}
	full := uint64(24 + len(list))
	for _, tc := range []struct {
		name string
		in   []byte
		err  error
	}{
		{"short-header", hdr(full, 4)[:10], serialize.ErrTruncated},
		{"version-2", append(serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: 2, BufferSize: full, Count: 4}, le), list...), serialize.ErrFormat},
		{"count-too-big", append(hdr(full, 1<<40), list...), serialize.ErrFormat},
		{"count-too-small", append(hdr(full, 3), list...), serialize.ErrFormat},
		{"size-too-small", append(hdr(full-5, 4), list...), serialize.ErrFormat},
		{"size-too-big", append(hdr(full+50, 4), list...), serialize.ErrFormat},
		{"truncated", append(hdr(full, 4), list[:len(list)-7]...), serialize.ErrTruncated},
	} {
		kr, err := serialize.NewKexecReader(bytes.NewReader(tc.in), le)
		if err == nil {
			for {
				if _, err = kr.Next(); err != nil {
					break
				}
			}
			if err == io.EOF {
				err = nil
			}
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: want %v, got %v", tc.name, tc.err, err)
		}
	}
}

// TestHostileLengthsCostNoMemory: a 40-byte input that claims a huge template must cost an
// error, not memory (issue: no allocation beyond a small multiple of the input size).
func TestHostileLengthsCostNoMemory(t *testing.T) {
	d20 := bytes.Repeat([]byte{1}, 20)
	for _, claim := range []uint32{0xFFFFFFFF, serialize.MaxTemplateDataLen} {
		in := record(10, d20, "ima-ng", []byte("abcd"), claim)
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		for i := 0; i < 10; i++ {
			if _, err := readErr(in, 20); err == nil {
				t.Fatal("hostile input accepted")
			}
		}
		runtime.ReadMemStats(&m1)
		// 10 readers: each has a 64 KiB bufio buffer and may grow data by one 64 KiB chunk.
		if per := (m1.TotalAlloc - m0.TotalAlloc) / 10; per > 512<<10 {
			t.Errorf("claim %d: %d bytes allocated per read of a %d-byte input", claim, per, len(in))
		}
	}
	// The kexec reader and the ASCII reader, likewise.
	kx := serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: 1, BufferSize: 1 << 62, Count: 1 << 40}, le)
	kr, err := serialize.NewKexecReader(bytes.NewReader(kx), le)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kr.Next(); !errors.Is(err, serialize.ErrTruncated) {
		t.Errorf("kexec header claiming 2^40 records over an empty buffer: %v", err)
	}
	kx = serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: 1, BufferSize: 100, Count: 1 << 62}, le)
	if _, err := serialize.NewKexecReader(bytes.NewReader(kx), le); !errors.Is(err, serialize.ErrFormat) {
		t.Errorf("count overflowing the size check: %v", err)
	}
}
