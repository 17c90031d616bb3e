package handover

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

// kenv is a kernel model served over FUSE (kmodeltest.Mount: securityfs tree, TPM socket
// and a procfs directory the model keeps current at every boot) and a store directory.
type kenv struct {
	t     testing.TB
	k     *kmodel.Kernel
	cfg   kmodel.Config
	paths Paths
	sock  string // the model's TPM, for subprocesses (--tpm unix:SOCK)
	store string
	files int
	rng   *rand.Rand
}

func newKenv(t testing.TB, cfg kmodel.Config) *kenv {
	t.Helper()
	env := kmodeltest.Mount(t, cfg)
	return &kenv{t: t, k: env.Kernel, cfg: cfg, paths: Paths{Securityfs: env.Securityfs, Proc: env.Proc}, sock: env.TPMSocket,
		store: filepath.Join(t.TempDir(), "store"), rng: rand.New(rand.NewPCG(1, 2))}
}

// work measures n new files (and now and then a violation) in the model kernel.
func (e *kenv) work(n int) {
	e.t.Helper()
	kmodeltest.Work(e.t, e.k, &e.files, n, 97)
}

func (e *kenv) drain(backend Backend, hook func(Step, uint64) error) (*DrainResult, error) {
	return Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: e.store, Backend: backend, TPM: e.k.TPM(), Hook: hook, BusyTimeout: 5 * 1e9})
}

func (e *kenv) mustDrain(backend Backend) *DrainResult {
	e.t.Helper()
	r, err := e.drain(backend, nil)
	if err != nil {
		e.t.Fatalf("drain %s: %v", backend, err)
	}
	return r
}

// verify checks that the store plus the records the kernel still holds (staged, then
// current, less those the store already has) replay to the TPM's PCRs in every bank, and
// that the store checks.
func (e *kenv) verify() {
	e.t.Helper()
	s, err := OpenStore(e.store)
	if err != nil {
		e.t.Fatalf("open store: %v", err)
	}
	banks := e.k.Banks()
	if h := s.Header(); h != nil {
		banks = nil
		for _, n := range h.Banks {
			b, _ := serialize.ParseBank(n)
			banks = append(banks, b)
		}
	}
	var retained uint64
	ki, _ := ReadKernelInfo(e.paths)
	if b := s.Boot(ki.BootID); b != nil {
		retained = b.Retained
	}
	e.replayWithTail(banks, int(retained))
}

// replayWithTail checks the store, then replays its chain followed by the kernel's held
// records (staged, then current) past the first skip, in the given banks, against the TPM.
func (e *kenv) replayWithTail(banks []serialize.Bank, skip int) {
	e.t.Helper()
	s, err := OpenStore(e.store)
	if err != nil {
		e.t.Fatalf("open store: %v", err)
	}
	if _, err := s.Check(); err != nil {
		e.t.Fatalf("store check: %v", err)
	}
	rp, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, DigestBank: &serialize.SHA1})
	if err != nil {
		e.t.Fatal(err)
	}
	cr := s.Reader()
	defer cr.Close()
	if err := rp.AddAll(cr); err != nil {
		e.t.Fatalf("replay store: %v", err)
	}
	held := append(e.k.Staged(), e.k.List()...)
	if len(held) < skip {
		e.t.Fatalf("kernel holds %d records, store says %d retained", len(held), skip)
	}
	for i := skip; i < len(held); i++ {
		if err := rp.Add(&held[i]); err != nil {
			e.t.Fatal(err)
		}
	}
	want, err := ReadPCRs(e.k.TPM(), banks, rp.Touched())
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := rp.Result().Verify(want); err != nil {
		e.t.Fatalf("store (%d records) + kernel records from %d of %d does not replay to the TPM: %v", s.Records(), skip, len(held), err)
	}
}
