package serialize

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzBinaryReaderBuffered: the one-Peek path of BinaryReader (readBuffered) returns the
// same records, offsets and errors as the field-by-field read, on any input.
func FuzzBinaryReaderBuffered(f *testing.F) {
	paths, _ := filepath.Glob("testdata/vm/*/binary_runtime_measurements")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
			f.Add(b[:len(b)-7])
		}
	}
	ima := binary.LittleEndian.AppendUint32(nil, 10)
	ima = append(ima, make([]byte, 20)...)
	ima = binary.LittleEndian.AppendUint32(ima, 3)
	ima = append(ima, "ima"...)
	ima = append(ima, make([]byte, 20)...)
	ima = binary.LittleEndian.AppendUint32(ima, 5)
	ima = append(ima, "/init"...)
	f.Add(ima)
	f.Add(ima[:len(ima)-2])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, ds := range []int{20, 32} {
			fast := NewBinaryReader(bytes.NewReader(in), binary.LittleEndian, ds)
			slow := NewBinaryReader(bytes.NewReader(in), binary.LittleEndian, ds)
			slow.fieldByField = true
			for i := 0; ; i++ {
				a, errA := fast.Next()
				b, errB := slow.Next()
				if (errA == nil) != (errB == nil) || (errA != nil && errA.Error() != errB.Error()) {
					t.Fatalf("record %d: buffered read: %v; field by field: %v", i, errA, errB)
				}
				if errA != nil {
					if errors.Is(errA, io.EOF) != errors.Is(errB, io.EOF) {
						t.Fatalf("record %d: EOF differs", i)
					}
					break
				}
				if a.PCR != b.PCR || a.Template != b.Template || !bytes.Equal(a.Digest, b.Digest) || !bytes.Equal(a.Data, b.Data) || fast.Offset() != slow.Offset() {
					t.Fatalf("record %d differs: %+v at %d, %+v at %d", i, a, fast.Offset(), b, slow.Offset())
				}
			}
		}
	})
}
