package handover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/simfs"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

// kenv is a kernel model served over FUSE, a fake procfs beside it and a store directory.
type kenv struct {
	t     testing.TB
	k     *kmodel.Kernel
	cfg   kmodel.Config
	paths Paths
	store string
	files int
	rng   *rand.Rand
}

func newKenv(t testing.TB, cfg kmodel.Config) *kenv {
	t.Helper()
	k, err := kmodel.New(cfg)
	if err != nil {
		if strings.Contains(err.Error(), "CGO") || strings.Contains(err.Error(), "cgo") {
			testenv.Missing(t, "TPM simulator: %v", err)
		}
		t.Fatalf("kernel model: %v", err)
	}
	mnt := t.TempDir()
	srv, err := simfs.Mount(mnt, k, nil)
	if err != nil {
		k.Close()
		testenv.Missing(t, "FUSE mount of the kernel model: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
		k.Close()
	})
	e := &kenv{t: t, k: k, cfg: cfg, paths: Paths{Securityfs: mnt, Proc: t.TempDir()}, store: filepath.Join(t.TempDir(), "store"), rng: rand.New(rand.NewPCG(1, 2))}
	e.writeProc()
	return e
}

// writeProc writes the procfs files the model kernel would show: boot id (new per boot),
// release and command line.
func (e *kenv) writeProc() {
	e.t.Helper()
	cmd := "console=ttyS0"
	if e.cfg.FlushHTable {
		cmd += " ima_flush_htable"
	}
	files := map[string]string{
		"sys/kernel/random/boot_id": fmt.Sprintf("00000000-0000-4000-8000-%012x\n", e.k.Boots()),
		"sys/kernel/osrelease":      e.k.Features().Release + "\n",
		"cmdline":                   cmd + "\n",
	}
	for n, c := range files {
		p := filepath.Join(e.paths.Proc, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			e.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
}

// work measures n new files (and now and then a violation) in the model kernel.
func (e *kenv) work(n int) {
	e.t.Helper()
	for i := 0; i < n; i++ {
		e.files++
		p := fmt.Sprintf("/usr/bin/tool-%d", e.files)
		var err error
		switch {
		case e.files%97 == 0:
			_, err = e.k.Violation(p)
		case e.files%2 == 0:
			_, err = e.k.Exec(p, []byte(p))
		default:
			_, err = e.k.Read(p, []byte(p+"x"))
		}
		if err != nil {
			e.t.Fatalf("measure %s: %v", p, err)
		}
	}
}

func (e *kenv) drain(backend string, hook func(Step, uint64) error) (*DrainResult, error) {
	return Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: e.store, Backend: backend, TPM: e.k.TPM(), Hook: hook, BusyTimeout: 5 * 1e9})
}

func (e *kenv) mustDrain(backend string) *DrainResult {
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
	if _, err := s.Check(); err != nil {
		e.t.Fatalf("store check: %v", err)
	}
	banks := e.k.Banks()
	if h := s.Header(); h != nil {
		banks = nil
		for _, n := range h.Banks {
			b, _ := serialize.ParseBank(n)
			banks = append(banks, b)
		}
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
	var retained uint64
	ki, _ := ReadKernelInfo(e.paths)
	if b := s.Boot(ki.BootID); b != nil {
		retained = b.Retained
	}
	if uint64(len(held)) < retained {
		e.t.Fatalf("kernel holds %d records, store says %d retained", len(held), retained)
	}
	for i := range held[retained:] {
		if err := rp.Add(&held[int(retained)+i]); err != nil {
			e.t.Fatal(err)
		}
	}
	got := rp.State()
	var pcrs []uint32
	for p := range got {
		pcrs = append(pcrs, p)
	}
	want, err := ReadPCRs(e.k.TPM(), banks, pcrs)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := rp.Result().Verify(want); err != nil {
		e.t.Fatalf("store (%d records, %d retained) + kernel (%d held) does not replay to the TPM: %v", s.Records(), retained, len(held), err)
	}
}

// serveTPM serves t on a unix socket, one raw TPM 2.0 command per connection (what
// linuxudstpm expects). It returns the socket path.
func serveTPM(t testing.TB, tpm transport.TPM) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tpm")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "tpm.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait(); os.RemoveAll(dir) })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			func() {
				defer c.Close()
				hdr := make([]byte, 10)
				if _, err := io.ReadFull(c, hdr); err != nil {
					return
				}
				n := int(uint32(hdr[2])<<24 | uint32(hdr[3])<<16 | uint32(hdr[4])<<8 | uint32(hdr[5]))
				if n < 10 || n > 1<<16 {
					return
				}
				cmd := make([]byte, n)
				copy(cmd, hdr)
				if _, err := io.ReadFull(c, cmd[10:]); err != nil {
					return
				}
				rsp, err := tpm.Send(cmd)
				if err != nil {
					var tpmErr interface{ Error() string }
					if errors.As(err, &tpmErr) && len(rsp) == 0 {
						return
					}
				}
				c.Write(rsp)
			}()
		}
	}()
	return sock
}

var _ = bytes.Equal
