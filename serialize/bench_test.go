package serialize_test

import (
	"bytes"
	"testing"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/serialize"
)

func benchList(b *testing.B, n int) []byte {
	b.Helper()
	return genList(b, n, listgen.Options{Seed: 42})
}

func benchReplay(b *testing.B, banks []serialize.Bank) {
	const n = 100_000
	list := benchList(b, n)
	b.SetBytes(int64(len(list)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := serialize.Replay(serialize.NewBinaryReader(bytes.NewReader(list), le, 20),
			serialize.ReplayOptions{Banks: banks, DigestBank: &serialize.SHA1})
		if err != nil || res.Records != n {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkReplaySHA1SHA256(b *testing.B) {
	benchReplay(b, []serialize.Bank{serialize.SHA1, serialize.SHA256})
}
func BenchmarkReplaySHA1(b *testing.B) { benchReplay(b, []serialize.Bank{serialize.SHA1}) }
func BenchmarkReplayAllBanks(b *testing.B) {
	benchReplay(b, []serialize.Bank{serialize.SHA1, serialize.SHA256, serialize.SHA384, serialize.SHA512})
}

func BenchmarkBinaryRead(b *testing.B) {
	const n = 100_000
	list := benchList(b, n)
	b.SetBytes(int64(len(list)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := drain(serialize.NewBinaryReader(bytes.NewReader(list), le, 20)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkASCIIRender reads a binary list and writes its SHA1 ASCII list, per record as
// the view renders stored records on every read.
func BenchmarkASCIIRender(b *testing.B) {
	const n = 100_000
	list := benchList(b, n)
	b.SetBytes(int64(len(list)))
	var out bytes.Buffer
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out.Reset()
		br := serialize.NewBinaryReader(bytes.NewReader(list), le, 20)
		aw := serialize.NewASCIIWriter(&out, le, serialize.SHA1, nil)
		for {
			rec, err := br.Next()
			if err != nil {
				break
			}
			if err := aw.Write(rec); err != nil {
				b.Fatal(err)
			}
		}
		aw.Flush()
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}
