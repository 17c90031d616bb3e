package handover

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/imakexec/imakexec/serialize"
)

// writeBigManifest writes a store manifest of n segment lines (no segment files: reading the
// manifest is what is measured), as n drains of one record each would leave it.
func writeBigManifest(tb testing.TB, dir string, n int) int64 {
	if err := os.MkdirAll(filepath.Join(dir, segmentsDir), dirMode); err != nil {
		tb.Fatal(err)
	}
	os.Chmod(dir, dirMode)
	f, err := os.OpenFile(filepath.Join(dir, manifestName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fileMode)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	now := time.Now().UTC()
	h := Entry{Type: EntryHeader, Time: now, Header: &Header{Version: ManifestVersion, StoreID: "bench", Banks: []string{"sha1", "sha256"}}}
	line, _ := encodeEntry(&h)
	w.Write(append(line, '\n'))
	prev := lineHash(line)
	pcrs := pcrsJSON(serialize.PCRValues{10: {"sha1": make([]byte, 20), "sha256": make([]byte, 32)}})
	for i := 1; i <= n; i++ {
		sg := &Segment{Number: i, File: segmentName(i), SHA256: lineHash(nil), Size: 24 + 120, FirstSeq: uint64(i - 1), Count: 1,
			Source: SourceStaged, Backend: BackendStaged, Boot: BootInfo{BootID: "b", KernelRelease: "7.2.13", FirstIndex: uint64(i - 1)},
			IMAHash: "sha256", KernelBanks: []string{"sha1", "sha256"}, Scheme: SchemeHash, ByteOrder: "little", FlushHtable: "off",
			Held: 1, PCRs: pcrs, BootHash: "00", BootSum: "00"}
		e := Entry{Type: EntrySegment, Index: i, Prev: prev, Time: now, Segment: sg}
		line, _ := encodeEntry(&e)
		w.Write(append(line, '\n'))
		prev = lineHash(line)
	}
	w.Flush()
	fi, _ := f.Stat()
	return fi.Size()
}

// BenchmarkOpenStoreManifest reads a 100,000-line manifest (what status and every command
// do first), reporting its size.
func BenchmarkOpenStoreManifest(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "store")
	size := writeBigManifest(b, dir, 100_000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := OpenStore(dir)
		if err != nil {
			b.Fatal(err)
		}
		if len(s.entries) != 100_001 {
			b.Fatalf("%d entries", len(s.entries))
		}
	}
	b.ReportMetric(float64(size)/(1<<20), "manifest-MiB")
}

// BenchmarkStatusManifest is GetStatus (what `imakexec status` does) on the 100,000-line
// manifest, reporting the heap the loaded store keeps (heap-MiB, after a GC).
func BenchmarkStatusManifest(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "store")
	writeBigManifest(b, dir, 100_000)
	none := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := GetStatus(Paths{Securityfs: none, Proc: none}, dir, nil, "", nil)
		if st.Store.Segments != 100_000 || st.Store.Records != 100_000 {
			b.Fatalf("status: %d segments, %d records (%s)", st.Store.Segments, st.Store.Records, st.Store.Err)
		}
	}
	b.StopTimer()
	s, err := OpenStore(dir)
	if err != nil {
		b.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
	runtime.KeepAlive(s)
}
