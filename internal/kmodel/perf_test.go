package kmodel_test

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

// TestMillion measures 1,000,000 records (each extended into the simulator), reads the
// list through the mount, deletes it with N, and checks the TPM against the replay.
func TestMillion(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
	k := env.Kernel
	start := time.Now()
	n, err := k.Synthetic(1_000_000)
	if err != nil || n != 1_000_000 {
		t.Fatalf("synthetic: %d %v", n, err)
	}
	measured := time.Since(start)
	start = time.Now()
	f, err := os.Open(filepath.Join(env.IMADir, "binary_runtime_measurements_sha256"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: []serialize.Bank{serialize.SHA256}, DigestBank: &serialize.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.AddAll(serialize.NewBinaryReader(f, le, 32)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	read := time.Since(start)
	if r.Records() != 1_000_001 {
		t.Fatalf("read %d records", r.Records())
	}
	pcrs, err := kmodel.ReadPCRs(env.TPM, []serialize.Bank{serialize.SHA256}, []uint32{10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Result().Verify(pcrs); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := writeFile(filepath.Join(env.IMADir, "binary_runtime_measurements_sha1"), os.O_WRONLY, strconv.Itoa(r.Records())+"\n"); err != nil {
		t.Fatal(err)
	}
	if c := k.Counters(); c.Current != 0 {
		t.Fatalf("after N: %+v", c)
	}
	t.Logf("1,000,000 measurements %v; read+replay through FUSE %v; delete %v", measured, read, time.Since(start))
}

// BenchmarkMeasure is one measurement: template data, four bank digests, hash table, list
// add and a PCR_Extend of four banks into the simulator.
func BenchmarkMeasure(b *testing.B) {
	k := kmodeltest.NewKernel(b, kmodel.Config{Profile: kmodel.Profile72})
	b.ResetTimer()
	if _, err := k.Synthetic(b.N); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReadListFUSE reads a 100,000-record SHA256 list through the mount.
func BenchmarkReadListFUSE(b *testing.B) {
	env := kmodeltest.Mount(b, kmodel.Config{Profile: kmodel.Profile616})
	env.Kernel.Synthetic(100_000)
	name := filepath.Join(env.IMADir, "binary_runtime_measurements_sha256")
	b.ResetTimer()
	var total int64
	for i := 0; i < b.N; i++ {
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, f)
		f.Close()
		if err != nil {
			b.Fatal(err)
		}
		total += n
	}
	b.SetBytes(total / int64(b.N))
	b.ReportMetric(100_000, "records/op")
}
