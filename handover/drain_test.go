// This file is long on purpose: it is the drain's behaviour on every kernel profile and
// backend (workload, crash matrix, busy and suspended kernels, kexec under way) over one
// shared kernel-model environment; the store's own safety tests are in storesafe_test.go.

package handover

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/testenv"
)

// setups lists every profile with the backends it offers (7.2 with ima_flush_htable on and
// off).
var setups = []struct {
	name     string
	cfg      kmodel.Config
	backends []Backend
}{
	{"debian-6.1", kmodel.Config{Profile: kmodel.ProfileDebian61}, []Backend{BackendSnapshot}},
	{"6.1-ima-kexec", kmodel.Config{Profile: kmodel.Profile61IMAKexec}, []Backend{BackendSnapshot}},
	{"6.16", kmodel.Config{Profile: kmodel.Profile616}, []Backend{BackendSnapshot}},
	{"7.2", kmodel.Config{Profile: kmodel.Profile72}, []Backend{BackendStaged, BackendDeleteN, BackendSnapshot}},
	{"7.2-flush", kmodel.Config{Profile: kmodel.Profile72, FlushHTable: true}, []Backend{BackendStaged, BackendSnapshot}},
	{"7.2+trim-log", kmodel.Config{Profile: kmodel.Profile72Trim}, []Backend{BackendStaged, BackendTrimLog, BackendDeleteN}},
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
		backend Backend
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

// verifyWithTail checks that the store's chain followed by the kernel's held records past
// the first skip (those the store already has) replays to the TPM in every kernel bank.
func (e *kenv) verifyWithTail(skip int) {
	e.t.Helper()
	e.replayWithTail(e.k.Banks(), skip)
}

func lastEntry(t *testing.T, e *kenv) (Entry, int) {
	t.Helper()
	s, err := OpenStore(e.store)
	if err != nil {
		t.Fatal(err)
	}
	es := s.Entries()
	return es[len(es)-1], len(es)
}

// TestDrainKexecUnderWay: a kexec starts (the reboot notifiers suspend measurement, as
// Suspend does) while a drain is between its durable manifest line and the kernel delete.
// D or N then fails with ESTALE: the drain must succeed, record that the kernel still holds
// the records (suspended, not deleted) and say so. A drain before the jump must not store
// them twice: staged gets EEXIST from A (ima_queue_stage checks "something staged" before
// "suspended"), then ESTALE again from D; delete-n stores only the kexec_execute record.
// After the jump the next kernel's drain starts a new generation. No record is lost at any
// point: the store plus what the kernel holds past it replays to the TPM.
func TestDrainKexecUnderWay(t *testing.T) {
	for _, backend := range []Backend{BackendStaged, BackendDeleteN} {
		t.Run(string(backend), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
			e.work(20)
			e.mustDrain(backend)
			e.work(15)
			if err := e.k.KexecLoad([]byte("next kernel"), []byte("next initrd"), kmodel.DefaultCmdline(e.cfg)); err != nil {
				t.Fatal(err)
			}
			suspended := false
			r, err := e.drain(backend, func(s Step, n uint64) error {
				if s == StepManifestSynced && !suspended {
					suspended = true
					_, err := e.k.Suspend() // adds the kexec_execute record, then suspends
					return err
				}
				return nil
			})
			if err != nil {
				t.Fatalf("drain meeting ESTALE: %v", err)
			}
			if !suspended || !r.Suspended || r.Deleted != 0 || r.Stored == 0 || !strings.Contains(r.String(), "suspended") {
				t.Fatalf("result %+v (%s)", r, r)
			}
			last, n := lastEntry(t, e)
			if last.Deleted == nil || !last.Deleted.Carried || last.Deleted.BootID != e.k.BootID() || last.Deleted.Through != r.Held+1+20 {
				t.Fatalf("last manifest entry %+v, want a suspended (not deleted) mark through %d", last.Deleted, r.Held+21)
			}
			held := int(r.Held) // the stored records the kernel still holds (staged or current)
			if c := e.k.Counters(); c.Staged+c.Current != held+1 {
				t.Fatalf("kernel holds %d staged + %d current, want the %d carried and the kexec_execute record", c.Staged, c.Current, held)
			}
			e.verifyWithTail(held)

			// A drain before the jump.
			r2, err := e.drain(backend, nil)
			switch backend {
			case BackendStaged:
				if err != nil || !r2.Suspended || r2.Stored != 0 || r2.Retained != uint64(held) || r2.Deleted != 0 {
					t.Fatalf("staged drain while suspended: %+v, %v; want the staged records retained, nothing stored or deleted", r2, err)
				}
				if _, n2 := lastEntry(t, e); n2 != n {
					t.Fatalf("a repeated refusal wrote %d manifest lines", n2-n)
				}
			case BackendDeleteN:
				// The carried records are recognised at the head of the list; only the
				// kexec_execute record is new.
				if err != nil {
					t.Fatalf("delete-n drain while suspended: %v", err)
				}
				if r2.Stored != 1 || r2.Retained != uint64(held) || !r2.Suspended {
					t.Fatalf("delete-n drain while suspended: %+v, want 1 stored, %d retained, suspended", r2, held)
				}
				held++
			}
			e.verifyWithTail(held)

			// The jump: 7.2 carries staged and current records. The new boot is new to the
			// store: drain refuses it until rejoin has joined it (else it would store the
			// carried records a second time), then drains it as the next generation.
			old := e.k.BootID()
			atJump := held // records the kernel carries: all stored, and (staged) kexec_execute
			if backend == BackendStaged {
				atJump++
			}
			if cn := e.k.Counters(); cn.Staged+cn.Current != atJump {
				t.Fatalf("kernel holds %+v before the jump, want %d", cn, atJump)
			}
			if err := e.k.KexecExecute(); err != nil {
				t.Fatal(err)
			}
			e.work(3)
			_, n = lastEntry(t, e)
			if _, err := e.drain(backend, nil); !errors.Is(err, ErrNotJoined) || !strings.Contains(err.Error(), "imakexec rejoin") {
				t.Fatalf("drain after the jump, before rejoin: %v, want ErrNotJoined naming imakexec rejoin", err)
			}
			if _, n2 := lastEntry(t, e); n2 != n {
				t.Fatalf("refused drain wrote %d manifest lines", n2-n)
			}
			rj, err := e.rejoin(nil)
			if err != nil {
				t.Fatalf("rejoin after the jump: %v", err)
			}
			if rj.BootID == old || rj.Generation != 1 || rj.Join == nil || rj.Join.KernelCarried != uint64(atJump) {
				t.Fatalf("rejoin after the jump: %+v (join %+v), want generation 1 with %d carried", rj, rj.Join, atJump)
			}
			e.work(2)
			if r3 := e.mustDrain(backend); r3.Generation != 1 || r3.Suspended {
				t.Fatalf("drain after the rejoin: %+v", r3)
			}
			e.mustVerify("after the jump")
			s, _ := OpenStore(e.store)
			if _, err := s.Check(); err != nil {
				t.Fatalf("store check: %v", err)
			}
		})
	}
}

// TestDrainStagedSuspendedPersists: A meets EACCES (nothing staged, records in the current
// list, measurement suspended): the list stays readable, so the drain stores it as a
// snapshot, deletes nothing, and says measurement is suspended.
func TestDrainStagedSuspendedPersists(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(5)
	e.mustDrain(BackendStaged)
	e.work(7)
	if _, err := e.k.Suspend(); err != nil {
		t.Fatal(err)
	}
	r, err := e.drain(BackendStaged, nil)
	if err != nil {
		t.Fatalf("drain while suspended: %v", err)
	}
	if !r.Suspended || r.Stored != 7 || r.Deleted != 0 || len(r.Segments) != 1 || r.Segments[0].Source != SourceSnapshot {
		t.Fatalf("drain while suspended: %+v (%s)", r, r)
	}
	if c := e.k.Counters(); c.Current != 7 || c.Staged != 0 {
		t.Fatalf("kernel after the drain: %+v, want the 7 records still held", c)
	}
	e.verifyWithTail(7)
}

// TestDrainBusy: while another process keeps the IMA files open (a reader blocks the
// writer that staged and delete-n need; a writer blocks the reader snapshot needs), the
// drain retries with backoff up to its bound and then fails with ErrBusy (EBUSY kept),
// having changed nothing; released within the bound, the drain waits and succeeds.
func TestDrainBusy(t *testing.T) {
	for _, c := range []struct {
		name    string
		backend Backend
		hold    string
		flag    int
	}{
		{"reader-blocks-staged", BackendStaged, "binary_runtime_measurements_sha256", os.O_RDONLY},
		{"reader-blocks-delete-n", BackendDeleteN, "ascii_runtime_measurements", os.O_RDONLY},
		{"writer-blocks-snapshot", BackendSnapshot, "binary_runtime_measurements_sha1_staged", os.O_RDWR},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
			e.work(10)
			dir, err := e.paths.IMADir()
			if err != nil {
				t.Fatal(err)
			}
			hold := func() *os.File {
				f, err := os.OpenFile(filepath.Join(dir, c.hold), c.flag, 0)
				if err != nil {
					t.Fatalf("hold %s: %v", c.hold, err)
				}
				return f
			}
			// Timed out.
			f := hold()
			defer f.Close()
			const bound = 400 * time.Millisecond
			t0 := time.Now()
			_, err = Drain(t.Context(), DrainOptions{Paths: e.paths, StoreDir: e.store, Backend: c.backend, TPM: e.k.TPM(), BusyTimeout: bound})
			took := time.Since(t0)
			if !errors.Is(err, ErrBusy) || !errors.Is(err, unix.EBUSY) {
				t.Fatalf("drain with %s held: %v, want ErrBusy (EBUSY)", c.hold, err)
			}
			// The holder is named (this test process holds it through the FUSE mount), with
			// the file its descriptor resolves to (7.2's legacy names are symlinks).
			held, _ := filepath.EvalSymlinks(filepath.Join(dir, c.hold))
			if holder := fmt.Sprintf("pid %d (this process) has %s open", os.Getpid(), filepath.Base(held)); !strings.Contains(err.Error(), holder) || !strings.Contains(err.Error(), "imakexec serve") {
				t.Fatalf("EBUSY error does not name the holder (%q) or the way out: %v", holder, err)
			}
			if st := GetStatus(e.paths, e.store, e.k.TPM(), "sim", nil); len(st.Holders) != 1 || st.Holders[0].File != filepath.Base(held) || st.Holders[0].PID != os.Getpid() {
				t.Fatalf("status names holders %+v, want this process on %s", st.Holders, c.hold)
			}
			if took < bound || took > bound+3*time.Second {
				t.Errorf("gave up after %v, bound %v", took, bound)
			}
			if cn := e.k.Counters(); cn.Current+cn.Staged != 11 {
				t.Fatalf("kernel changed by a failed drain: %+v", cn)
			}
			if s, err := OpenStore(e.store); err == nil && s.Records() != 0 {
				t.Fatalf("failed drain stored %d records", s.Records())
			}
			f.Close()

			// Released while the drain waits.
			f = hold()
			defer f.Close()
			const release = 300 * time.Millisecond
			go func() { time.Sleep(release); f.Close() }()
			t0 = time.Now()
			r, err := Drain(t.Context(), DrainOptions{Paths: e.paths, StoreDir: e.store, Backend: c.backend, TPM: e.k.TPM(), BusyTimeout: 20 * time.Second})
			if err != nil {
				t.Fatalf("drain after release: %v", err)
			}
			if time.Since(t0) < release || r.Stored != 11 {
				t.Fatalf("drain took %v (holder released after %v), stored %d", time.Since(t0), release, r.Stored)
			}
			e.verify()
		})
	}
}

// TestDrainStagingRFCv1: the staged backend works on the RFC v1 file names
// (`…_staged_<algo>`), where reading an empty staged list fails with ENOENT.
func TestDrainStagingRFCv1(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72, StagingRFCv1: true})
	k, err := ProbeKernel(e.paths)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(k.Staged) != "binary_runtime_measurements_staged_sha1" {
		t.Fatalf("probed staged file %s", k.Staged)
	}
	for round := 0; round < 3; round++ {
		e.work(10 + round)
		r := e.mustDrain(BackendAuto)
		if r.Backend != BackendStaged || r.Deleted != r.Held || r.Stored != r.Held {
			t.Fatalf("round %d: %+v", round, r)
		}
		e.verify()
	}
	// Nothing current, nothing staged: A gives ENOENT, the staged read ENOENT too.
	if r := e.mustDrain(BackendStaged); r.Held != 0 || r.Stored != 0 {
		t.Fatalf("idle drain: %+v", r)
	}
	// A crash after A leaves records staged; the next drain finishes them.
	e.work(7)
	_, err = e.drain(BackendStaged, func(s Step, n uint64) error {
		if s == StepStaged {
			return errCrash
		}
		return nil
	})
	if !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	e.work(2)
	e.mustDrain(BackendStaged)
	e.verify()
	if c := e.k.Counters(); c.Current != 0 || c.Staged != 0 {
		t.Fatalf("kernel still holds %+v", c)
	}
}

// TestSnapshotAcrossKexec: on kernels with read-only lists, a snapshot drain before the
// kexec and one in the next boot. The new boot (new boot id in the model's /proc) must be a
// new generation starting at index 0 of its own list, not taken for a continuation of the
// old one (which would be a mismatch, or records skipped). Debian 6.1 carries nothing, so
// the store alone then replays to the TPM; 6.1 with IMA_KEXEC carries the list copied at
// load, which the new generation holds again, byte for byte.
func TestSnapshotAcrossKexec(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec} {
		t.Run(string(p), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: p})
			e.work(12)
			if err := e.k.KexecLoad([]byte("next kernel"), []byte("next initrd"), kmodel.DefaultCmdline(e.cfg)); err != nil {
				t.Fatal(err)
			}
			r1 := e.mustDrain(BackendAuto)
			if r1.Backend != BackendSnapshot || r1.Generation != 0 {
				t.Fatalf("first drain %+v", r1)
			}
			before := e.k.List()
			oldBoot := e.k.BootID()
			if err := e.k.KexecExecute(); err != nil {
				t.Fatal(err)
			}
			e.work(4)
			// New to the store: drain refuses until rejoin joined this boot.
			if _, err := e.drain(BackendAuto, nil); !errors.Is(err, ErrNotJoined) {
				t.Fatalf("drain in the new boot before rejoin: %v, want ErrNotJoined", err)
			}
			rj, err := e.rejoin(nil)
			if err != nil {
				t.Fatalf("rejoin: %v", err)
			}
			after := e.k.List()
			r2 := rj.Drain
			if rj.BootID == oldBoot || rj.Generation != 1 || r2 == nil || r2.Generation != 1 {
				t.Fatalf("rejoin in the new boot: %+v", rj)
			}
			// Idle: nothing new, nothing mistaken for new.
			if r3 := e.mustDrain(BackendAuto); r3.Stored != 0 || r3.Retained != uint64(len(after)) || r3.Generation != 1 {
				t.Fatalf("idle drain in the new boot: %+v", r3)
			}
			s, err := OpenStore(e.store)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Check(); err != nil {
				t.Fatal(err)
			}
			if bs := s.Boots(); len(bs) != 2 || bs[0].BootID != oldBoot || bs[0].Stored != uint64(len(before)) || bs[1].Generation != 1 {
				t.Fatalf("boots %+v", bs)
			}
			switch p {
			case kmodel.ProfileDebian61:
				if len(after) != 1+4 {
					t.Fatalf("debian-6.1 carried records: new list has %d", len(after))
				}
				if r2.Stored != uint64(len(after)) {
					t.Fatalf("stored %d of the new boot's %d records", r2.Stored, len(after))
				}
			case kmodel.Profile61IMAKexec:
				// Copied at load: every record drained before the jump, in order; the join
				// recognises them, so the chain holds them once.
				if len(after) != len(before)+1+4 {
					t.Fatalf("new list %d records, want %d carried + boot_aggregate + 4", len(after), len(before))
				}
				if rj.Join == nil || rj.Join.Duplicated != uint64(len(before)) {
					t.Fatalf("join %+v, want the %d carried records recognised as stored", rj.Join, len(before))
				}
				if s.Records() != uint64(len(before)+1+4) {
					t.Fatalf("chain holds %d records, want %d (each once)", s.Records(), len(before)+1+4)
				}
			}
			e.mustVerify("after the kexec")
		})
	}
}

// TestDrainWritten: with KeepWritten the result holds the bytes the drain wrote, equal to
// the files: new segments whole, and the manifest as the copy taken before the drain (cut
// at ManifestFrom, its last line hashing to ManifestPrev) followed by Manifest. For a new
// store and after archiving, ManifestFrom is 0. Past the bound nothing is kept.
func TestDrainWritten(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	drainKeep := func(limit int64) *DrainResult {
		t.Helper()
		r, err := Drain(t.Context(), DrainOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), KeepWritten: limit})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(e.store, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	check := func(r *DrainResult, before []byte) {
		t.Helper()
		w := r.Written
		if w == nil || len(w.Segments) != len(r.Segments) || len(r.Segments) == 0 {
			t.Fatalf("written %+v for %d segments", w, len(r.Segments))
		}
		for i, sg := range r.Segments {
			if w.Segments[i].Name != sg.File || !bytes.Equal(w.Segments[i].Data, read(sg.File)) {
				t.Fatalf("kept segment %s differs from the file", sg.File)
			}
		}
		if w.ManifestFrom > int64(len(before)) {
			t.Fatalf("manifest from %d, copy has %d bytes", w.ManifestFrom, len(before))
		}
		prefix := before[:w.ManifestFrom]
		if w.ManifestFrom > 0 {
			lines := bytes.Split(bytes.TrimSuffix(prefix, []byte("\n")), []byte("\n"))
			if lineHash(lines[len(lines)-1]) != w.ManifestPrev {
				t.Fatal("ManifestPrev is not the hash of the copy's last line")
			}
		}
		if got := append(bytes.Clone(prefix), w.Manifest...); !bytes.Equal(got, read(w.ManifestName)) {
			t.Fatalf("copy + kept lines differ from the manifest:\n%s\n---\n%s", got, read(w.ManifestName))
		}
	}
	e.work(10)
	r := drainKeep(1 << 20) // creates the store
	if r.Written == nil || r.Written.ManifestFrom != 0 {
		t.Fatalf("first drain: %+v", r.Written)
	}
	check(r, nil)
	for i := 0; i < 2; i++ {
		before := read(manifestName)
		e.work(5)
		r = drainKeep(1 << 20)
		if r.Written.ManifestFrom != int64(len(before)) {
			t.Fatalf("manifest from %d, was %d bytes", r.Written.ManifestFrom, len(before))
		}
		check(r, before)
	}
	// A torn last line (a crash mid-append) is cut by the drain: the copy is cut there too.
	before := append(read(manifestName), `{"type":"segm`...)
	if err := os.WriteFile(filepath.Join(e.store, manifestName), before, 0o600); err != nil {
		t.Fatal(err)
	}
	e.work(3)
	r = drainKeep(1 << 20)
	if r.Written.ManifestFrom != int64(len(before))-13 {
		t.Fatalf("torn manifest: from %d of %d", r.Written.ManifestFrom, len(before))
	}
	check(r, before)
	// Past the bound.
	e.work(3)
	if r := drainKeep(100); r.Written != nil || r.Stored == 0 {
		t.Fatalf("kept %+v past a 100-byte bound", r.Written)
	}
	// A cold boot: the drain archives the chain and writes a new manifest.
	if err := e.k.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	e.work(4)
	r = drainKeep(1 << 20)
	if r.Archived == "" || r.Written == nil || r.Written.ManifestFrom != 0 {
		t.Fatalf("after a cold boot: archived %q written %+v", r.Archived, r.Written)
	}
	check(r, nil)
	e.verify()
}

// TestDrainOpensNothingForReading: once a drain has started reading the kernel's list, it
// opens no store file for reading (inotify IN_CLOSE_NOWRITE): the segment is read back
// through the descriptor it was written with, the manifest only appended to. Under a
// FILE_CHECK policy such an open would add a record after the list was read: in the kexec
// window when it is the last drain before a kexec.
func TestDrainOpensNothingForReading(t *testing.T) {
	for _, c := range []struct {
		backend Backend
		cfg     kmodel.Config
	}{
		{BackendStaged, kmodel.Config{Profile: kmodel.Profile72}},
		{BackendDeleteN, kmodel.Config{Profile: kmodel.Profile72}},
		{BackendTrimLog, kmodel.Config{Profile: kmodel.Profile72Trim}},
		{BackendSnapshot, kmodel.Config{Profile: kmodel.ProfileDebian61}},
	} {
		t.Run(string(c.backend), func(t *testing.T) {
			e := newKenv(t, c.cfg)
			e.work(10)
			e.mustDrain(c.backend) // the store exists, with a segment and a manifest
			e.work(10)
			fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
			if err != nil {
				testenv.Unavailable(t, "inotify: %v", err)
			}
			defer unix.Close(fd)
			watching := false
			_, err = e.drain(c.backend, func(s Step, n uint64) error {
				if s == StepRead && !watching {
					watching = true
					for _, d := range []string{e.store, filepath.Join(e.store, segmentsDir)} {
						if _, err := unix.InotifyAddWatch(fd, d, unix.IN_OPEN|unix.IN_CLOSE_NOWRITE|unix.IN_CLOSE_WRITE); err != nil {
							return err
						}
					}
				}
				return nil
			})
			if err != nil || !watching {
				t.Fatalf("drain: %v (watching %v)", err, watching)
			}
			buf := make([]byte, 64<<10)
			n, err := unix.Read(fd, buf)
			if err != nil {
				t.Fatalf("read inotify events: %v", err)
			}
			var written, readOnly []string
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if ev.Mask&unix.IN_ISDIR != 0 || name == "" {
					continue // directory opens (fsync of the directory) are not measured
				}
				switch {
				case ev.Mask&unix.IN_CLOSE_NOWRITE != 0:
					readOnly = append(readOnly, name)
				case ev.Mask&unix.IN_CLOSE_WRITE != 0:
					written = append(written, name)
				}
			}
			if len(readOnly) > 0 {
				t.Errorf("store files opened for reading after the list was read: %v", readOnly)
			}
			// The watch saw the drain's writes (the segment and the manifest), so it would
			// have seen a read.
			if !strings.Contains(fmt.Sprint(written), ".kexec") || !strings.Contains(fmt.Sprint(written), manifestName) {
				t.Errorf("the watch missed the drain's writes: %v", written)
			}
		})
	}
}

// TestDrainRefusesNewChainAfterKexec: one store per host. After a kexec into a kernel that
// carried nothing (Debian 6.1) or what it copied at load (6.1 with IMA_KEXEC, records
// after the load lost), a drain into an empty store (another store directory, e.g. the
// hook's and the units' disagreeing) must not start a chain there: the running list does
// not replay from zero to the TPM. On 7.2 it must also delete nothing from the kernel. The
// same drain on the first kernel of a power cycle (a cold boot) starts the chain.
func TestDrainRefusesNewChainAfterKexec(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec, kmodel.ProfileDebian72} {
		t.Run(string(p), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: p})
			e.work(10)
			e.mustDrain(BackendAuto)
			if err := e.k.KexecLoad([]byte("next kernel"), []byte("next initrd"), kmodel.DefaultCmdline(e.cfg)); err != nil {
				t.Fatal(err)
			}
			e.work(3) // after the load: lost on 6.1 with IMA_KEXEC, never carried on Debian
			if err := e.k.KexecExecute(); err != nil {
				t.Fatal(err)
			}
			e.work(5)
			held := len(e.k.List())
			e.store = filepath.Join(t.TempDir(), "other-store")
			_, err := e.drain(BackendAuto, nil)
			if !errors.Is(err, ErrNotChainStart) || !IsNotVerified(err) {
				t.Fatalf("drain into an empty store after a kexec: %v, want ErrNotChainStart", err)
			}
			if n := len(e.k.List()); n != held {
				t.Fatalf("the refused drain changed the kernel's list: %d records, were %d", n, held)
			}
			if s := mustStoreT(t, e.store); len(s.Segments()) != 0 {
				t.Fatalf("the refused drain stored %d segments", len(s.Segments()))
			}
			// A cold boot: the running kernel is the first of the power cycle.
			if err := e.k.ColdBoot(); err != nil {
				t.Fatal(err)
			}
			e.work(4)
			if r := e.mustDrain(BackendAuto); r.Stored == 0 {
				t.Fatalf("drain after the cold boot stored nothing: %+v", r)
			}
			e.verify()
		})
	}
}

func mustStoreT(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
