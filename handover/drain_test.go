package handover

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// setups lists every profile with the backends it offers (7.2 with ima_flush_htable on and
// off).
var setups = []struct {
	name     string
	cfg      kmodel.Config
	backends []string
}{
	{"debian-6.1", kmodel.Config{Profile: kmodel.ProfileDebian61}, []string{BackendSnapshot}},
	{"6.1-ima-kexec", kmodel.Config{Profile: kmodel.Profile61IMAKexec}, []string{BackendSnapshot}},
	{"6.16", kmodel.Config{Profile: kmodel.Profile616}, []string{BackendSnapshot}},
	{"7.2", kmodel.Config{Profile: kmodel.Profile72}, []string{BackendStaged, BackendDeleteN, BackendSnapshot}},
	{"7.2-flush", kmodel.Config{Profile: kmodel.Profile72, FlushHTable: true}, []string{BackendStaged, BackendSnapshot}},
	{"7.2+trim-log", kmodel.Config{Profile: kmodel.Profile72Trim}, []string{BackendStaged, BackendTrimLog, BackendDeleteN}},
}

func TestDrainProfiles(t *testing.T) {
	for _, su := range setups {
		t.Run(su.name, func(t *testing.T) {
			e := newKenv(t, su.cfg)
			// auto picks the first offered backend
			e.work(20)
			r := e.mustDrain(BackendAuto)
			if r.Backend != su.backends[0] {
				t.Errorf("auto chose %s, want %s", r.Backend, su.backends[0])
			}
			e.verify()
			for _, b := range su.backends {
				for round := 0; round < 3; round++ {
					e.work(5 + e.rng.IntN(50))
					r := e.mustDrain(b)
					if b != BackendSnapshot && r.Held != r.Retained+r.Stored {
						t.Errorf("%s: held %d != retained %d + stored %d", b, r.Held, r.Retained, r.Stored)
					}
					e.verify()
				}
				// nothing new: a second drain stores nothing
				r := e.mustDrain(b)
				if r.Stored != 0 {
					t.Errorf("%s: idle drain stored %d records", b, r.Stored)
				}
				e.verify()
			}
			// under a running workload
			b := su.backends[0]
			var wg sync.WaitGroup
			stop := make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					p := fmt.Sprintf("/opt/bg-%d", i)
					if _, err := e.k.Exec(p, []byte(p)); err != nil {
						t.Errorf("workload: %v", err)
						return
					}
				}
			}()
			for i := 0; i < 5; i++ {
				if _, err := e.drain(b, nil); err != nil {
					close(stop)
					wg.Wait()
					t.Fatalf("drain under workload: %v", err)
				}
			}
			close(stop)
			wg.Wait()
			e.mustDrain(b)
			e.verify()
			if b != BackendSnapshot {
				if c := e.k.Counters(); c.Current != 0 || c.Staged != 0 {
					t.Errorf("after a final %s drain the kernel still holds %d current, %d staged", b, c.Current, c.Staged)
				}
			}
		})
	}
}

var errCrash = errors.New("injected crash")

// TestCrashMatrix interrupts a drain at every step; the next drain must finish the job
// with no record lost or duplicated (the replay against the TPM would show either).
func TestCrashMatrix(t *testing.T) {
	steps := []struct {
		step Step
		at   uint64 // 0: first occurrence
	}{
		{StepLocked, 0}, {StepStaged, 0}, {StepRead, 1}, {StepRead, 7}, {StepWrite, 1}, {StepWrite, 5},
		{StepSegmentWritten, 0}, {StepSegmentSynced, 0}, {StepManifestWritten, 0}, {StepManifestSynced, 0}, {StepDeleted, 0},
	}
	for _, c := range []struct {
		name    string
		cfg     kmodel.Config
		backend string
	}{
		{"staged", kmodel.Config{Profile: kmodel.Profile72}, BackendStaged},
		{"staged-flush", kmodel.Config{Profile: kmodel.Profile72, FlushHTable: true}, BackendStaged},
		{"delete-n", kmodel.Config{Profile: kmodel.Profile72}, BackendDeleteN},
		{"trim-log", kmodel.Config{Profile: kmodel.Profile72Trim}, BackendTrimLog},
		{"snapshot", kmodel.Config{Profile: kmodel.ProfileDebian61}, BackendSnapshot},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newKenv(t, c.cfg)
			for _, st := range steps {
				e.work(10 + e.rng.IntN(10))
				hit := false
				_, err := e.drain(c.backend, func(s Step, n uint64) error {
					if s == st.step && (st.at == 0 || n == st.at) && !hit {
						hit = true
						return errCrash
					}
					return nil
				})
				if hit && !errors.Is(err, errCrash) {
					t.Fatalf("crash at %s/%d: drain returned %v", st.step, st.at, err)
				}
				if !hit && err != nil {
					t.Fatalf("drain without reaching %s: %v", st.step, err)
				}
				if st.step != StepDeleted {
					// (after a crash between delete and manifest update only the next
					// drain knows how many stored records the kernel still holds)
					t.Logf("after crash at %s/%d", st.step, st.at)
					e.verify()
				}
				e.work(e.rng.IntN(5))
				r, err := e.drain(c.backend, nil)
				if err != nil {
					t.Fatalf("drain after crash at %s/%d: %v", st.step, st.at, err)
				}
				e.verify()
				if c.backend != BackendSnapshot {
					if cn := e.k.Counters(); cn.Current != 0 || cn.Staged != 0 {
						t.Fatalf("after crash at %s and a drain, kernel still holds %d+%d (result %+v)", st.step, cn.Staged, cn.Current, r)
					}
				}
			}
		})
	}
}

func TestConcurrentDrains(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(30)
	s := &Store{dir: e.store}
	if err := s.TryLock(); err != nil {
		t.Fatal(err)
	}
	_, err := Drain(t.Context(), DrainOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), NoWait: true})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second drain with --no-wait: %v, want ErrLocked", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Drain(t.Context(), DrainOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("drain did not wait for the lock: %v", err)
	default:
	}
	s.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("waiting drain: %v", err)
	}
	e.verify()
}
