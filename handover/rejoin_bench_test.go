package handover

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// BenchmarkRejoinVerify: rejoin (join proof, drain of the new boot, full verify) after a
// kexec of a Debian 6.1 model whose store holds IMAKEXEC_BENCH_RECORDS records (default
// 100,000). Reports records/s of the chain replayed.
func BenchmarkRejoinVerify(b *testing.B) {
	e, n := benchChain(b)
	kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("k")}
	initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("i")}
	if _, err := e.k.KexecLoadFiles(kernel, initrd, "console=ttyS0"); err != nil {
		b.Fatal(err)
	}
	if err := e.k.KexecExecute(); err != nil {
		b.Fatal(err)
	}
	w := windowInputs(kernel, initrd, "console=ttyS0")
	pristine := filepath.Join(b.TempDir(), "pristine")
	copyTree(b, e.store, pristine)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		os.RemoveAll(e.store)
		copyTree(b, pristine, e.store)
		b.StartTimer()
		r, err := Rejoin(context.Background(), RejoinOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), Window: w})
		if err != nil || r.Verify == nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkVerify: verify of a stored chain of IMAKEXEC_BENCH_RECORDS records.
func BenchmarkVerify(b *testing.B) {
	e, n := benchChain(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()})
		if err != nil || v == nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// benchChain is a Debian 6.1 model whose store holds IMAKEXEC_BENCH_RECORDS records
// (default 100,000), replayed in the banks a 6.1 kernel computes (sha1, sha256).
func benchChain(b *testing.B) (*kenv, int) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("IMAKEXEC_BENCH_RECORDS")); err == nil && v > 0 {
		n = v
	}
	e := newKenv(b, kmodel.Config{Profile: kmodel.ProfileDebian61})
	if _, err := e.k.Synthetic(n); err != nil {
		b.Fatal(err)
	}
	if _, err := Rejoin(context.Background(), RejoinOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), Banks: []serialize.Bank{serialize.SHA1, serialize.SHA256}}); err != nil {
		b.Fatal(err)
	}
	return e, n
}
