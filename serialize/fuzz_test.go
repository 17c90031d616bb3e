package serialize_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/serialize"
)

// seeds adds the real lists under testdata/vm and generated ones.
func seeds(f *testing.F, kexec bool) {
	paths, _ := filepath.Glob("testdata/vm/*/binary_runtime_measurements")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			if kexec {
				b = append(serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: 1, BufferSize: uint64(24 + len(b)), Count: uint64(countRecords(b))}, le), b...)
			}
			f.Add(b)
		}
	}
	g := genList(f, 8, listgen.Options{Seed: 11, Template: "ima-sig", SigEvery: 2, BufferEvery: 3, ViolationEvery: 5})
	if kexec {
		g = append(serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: 1, BufferSize: uint64(24 + len(g)), Count: 8}, le), g...)
	}
	f.Add(g)
	f.Add([]byte{})
	f.Add(record(10, make([]byte, 20), "ima-ng", []byte("abcd"), 0xFFFFFFF0))
}

func countRecords(b []byte) int {
	n, _ := readErr(b, 20)
	return n
}

// checkAlloc fails when parsing in allocated far beyond its size.
func checkAlloc(t *testing.T, in []byte, parse func()) {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	parse()
	runtime.ReadMemStats(&m1)
	if a := m1.TotalAlloc - m0.TotalAlloc; a > uint64(1<<20+64*len(in)) {
		t.Fatalf("%d bytes allocated for a %d-byte input", a, len(in))
	}
}

func drain(src serialize.Source) error {
	for {
		if _, err := src.Next(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

func FuzzBinaryReader(f *testing.F) {
	seeds(f, false)
	f.Fuzz(func(t *testing.T, in []byte) {
		checkAlloc(t, in, func() {
			for _, ds := range []int{20, 32} {
				br := serialize.NewBinaryReader(bytes.NewReader(in), le, ds)
				for {
					rec, err := br.Next()
					if err != nil {
						if err != io.EOF {
							var pe *serialize.ParseError
							if !errors.As(err, &pe) {
								t.Fatalf("error without offset: %v", err)
							}
						}
						break
					}
					// Whatever parses must write back byte for byte.
					var out bytes.Buffer
					w := serialize.NewBinaryWriter(&out, le, serialize.Bank{Name: "x", Size: ds}, nil)
					if err := w.Write(rec); err == nil {
						w.Flush()
						if int64(out.Len()) != int64(serialize.RecordSize(rec, ds)) {
							t.Fatalf("record size %d, written %d", serialize.RecordSize(rec, ds), out.Len())
						}
					}
					serialize.ParseFields(rec, le)
					serialize.EventName(rec, le)
				}
			}
		})
	})
}

func FuzzKexecReader(f *testing.F) {
	seeds(f, true)
	f.Fuzz(func(t *testing.T, in []byte) {
		checkAlloc(t, in, func() {
			for _, order := range []serialize.ByteOrder{binary.LittleEndian, binary.BigEndian} {
				if kr, err := serialize.NewKexecReader(bytes.NewReader(in), order); err == nil {
					drain(kr)
				}
			}
		})
	})
}

func FuzzASCIIReader(f *testing.F) {
	paths, _ := filepath.Glob("testdata/vm/*/ascii_runtime_measurements")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("10 0000000000000000000000000000000000000000 ima-ng sha1:0000000000000000000000000000000000000000 /x\n"))
	f.Add([]byte(" 9 1111111111111111111111111111111111111111 d-ng|n-ng|iuid|igid|imode sha256:00 /x 0  33188\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		checkAlloc(t, in, func() {
			ar := serialize.NewASCIIReader(bytes.NewReader(in), le)
			for {
				rec, err := ar.Next()
				if err != nil {
					break
				}
				// A record the ASCII reader accepts renders back without error.
				var out bytes.Buffer
				w := serialize.NewASCIIWriter(&out, le, serialize.Bank{Name: "x", Size: len(rec.Digest)}, nil)
				if err := w.Write(rec); err != nil {
					t.Fatalf("accepted record does not render: %v", err)
				}
			}
		})
	})
}

func FuzzTemplateFields(f *testing.F) {
	f.Add("ima-ng", genList(f, 1, listgen.Options{Seed: 12})[4+20+4+6+4:])
	f.Add("evm-sig", []byte{})
	f.Add("d-ng|n-ng|iuid|igid|imode", le.AppendUint32(nil, 0xFFFFFFFF))
	f.Add("ima", append(make([]byte, 20), 1, 0, 0, 0, 'x'))
	f.Fuzz(func(t *testing.T, tmpl string, data []byte) {
		rec := serialize.Record{PCR: 10, Template: tmpl, Data: data}
		fields, err := serialize.ParseFields(&rec, le)
		if err != nil {
			return
		}
		// Fields that parse build back to the same data.
		back, err := serialize.BuildData(tmpl, fields, le)
		if err != nil || !bytes.Equal(back, data) {
			t.Fatalf("fields do not rebuild the data: %v", err)
		}
		var out bytes.Buffer
		w := serialize.NewASCIIWriter(&out, le, serialize.SHA1, nil)
		if err := w.Write(&rec); err != nil {
			t.Fatal(err)
		}
	})
}
