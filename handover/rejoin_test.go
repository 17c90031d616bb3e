package handover

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

const noWindowPolicy = `measure func=BPRM_CHECK mask=MAY_EXEC
measure func=FILE_CHECK mask=MAY_READ uid=0
`

type rejoinScenario struct {
	profile     kmodel.Profile
	flush       bool
	kexecs      int
	drainBefore bool // the last drain right before the load (what `imakexec kexec` does)
	window      bool // the policy measures the kexec functions
}

func (sc rejoinScenario) name() string {
	n := fmt.Sprintf("%s/kexecs=%d/drain=%v/window=%v", sc.profile, sc.kexecs, sc.drainBefore, sc.window)
	if sc.flush {
		n += "/flush"
	}
	return n
}

// carries reports whether the profile's kernel hands its list to the next kernel.
func carries(p kmodel.Profile) bool { return p != kmodel.ProfileDebian61 }

// deletes reports whether drains delete records from the profile's kernel.
func deletes(p kmodel.Profile) bool { return p == kmodel.Profile72 || p == kmodel.Profile72Trim }

// windowInputs describes a kexec_file_load the way the handoff does.
func windowInputs(kernel, initrd kmodel.File, cmdline string) *WindowInputs {
	file := func(what string, f kmodel.File) WindowFile {
		s1, s256 := sha1.Sum(f.Content), sha256.Sum256(f.Content)
		return WindowFile{What: what, Names: []string{f.Path}, Digests: map[string][]byte{"sha1": s1[:], "sha256": s256[:]}, Mode: 0o100644}
	}
	return &WindowInputs{IMAHash: "sha256", Templates: []string{"ima-ng"}, PCR: 10,
		Files: []WindowFile{file("kernel", kernel), file("initrd", initrd)}, Cmdline: &cmdline}
}

func (e *kenv) rejoin(w *WindowInputs) (*RejoinResult, error) {
	return Rejoin(context.Background(), RejoinOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), Window: w})
}

// mustVerify checks the whole chain strictly: verified, no record after the proof, the
// store consistent, and the records proven equal to every extend the TPM received.
func (e *kenv) mustVerify(what string) *Verified {
	e.t.Helper()
	v, err := Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()})
	if err != nil {
		e.t.Fatalf("%s: verify: %v", what, err)
	}
	if v.Extra != 0 {
		e.t.Fatalf("%s: %d records after the proven prefix", what, v.Extra)
	}
	s, _ := OpenStore(e.store)
	if _, err := s.Check(); err != nil {
		e.t.Fatalf("%s: store check: %v", what, err)
	}
	return v
}

func runRejoinScenario(t *testing.T, sc rejoinScenario) {
	cfg := kmodel.Config{Profile: sc.profile, FlushHTable: sc.flush}
	if !sc.window {
		cfg.Policy = noWindowPolicy
	}
	e := newKenv(t, cfg)
	e.work(8)
	// The first boot of the power cycle: rejoin starts the chain.
	r, err := e.rejoin(nil)
	if err != nil || !r.NewChain {
		t.Fatalf("first rejoin: %+v %v", r, err)
	}
	e.mustVerify("boot 0")
	for i := 1; i <= sc.kexecs; i++ {
		e.work(6)
		if sc.drainBefore {
			e.mustDrain("auto")
		}
		kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte(fmt.Sprintf("kernel image %d", i%2))}
		initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte(fmt.Sprintf("initrd with handoff %d", i))}
		cmdline := fmt.Sprintf("console=ttyS0 imakexec.initrd=sha256:%x", sha256.Sum256(initrd.Content))
		if _, err := e.k.KexecLoadFiles(kernel, initrd, cmdline); err != nil {
			t.Fatal(err)
		}
		if err := e.k.KexecExecute(); err != nil {
			t.Fatal(err)
		}
		e.work(2) // the new boot measures a little before the hook runs
		r, err := e.rejoin(windowInputs(kernel, initrd, cmdline))
		if !sc.drainBefore && !carries(sc.profile) {
			// The records measured since the first boot's drain were in no list and in no
			// handoff: the join must fail and say so, and store nothing.
			var je *JoinError
			if !errors.As(err, &je) || !strings.Contains(err.Error(), "carried nothing") {
				t.Fatalf("kexec %d: want a JoinError naming the uncarried records, got %v", i, err)
			}
			_, cause, verr := verdictOf(Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()}))
			if verr != nil || cause == nil {
				t.Fatalf("kexec %d: verify after a failed join: verified=%v err=%v", i, cause == nil, verr)
			}
			return
		}
		if err != nil {
			t.Fatalf("kexec %d: rejoin: %v", i, err)
		}
		if r.Join == nil || r.Generation != i {
			t.Fatalf("kexec %d: join %+v generation %d", i, r.Join, r.Generation)
		}
		// The join's own proof counts the whole chain, as a later verify does.
		if v := e.mustVerify(fmt.Sprintf("kexec %d", i)); r.Verify.Records > v.Records || r.Verify.Records < r.Verify.Stored || r.Verify.Live < 0 {
			t.Fatalf("kexec %d: join proof counts %d records (%d stored, %d live), verify %d", i, r.Verify.Records, r.Verify.Stored, r.Verify.Live, v.Records)
		}
		// Who carried what, per profile.
		switch {
		case !carries(sc.profile):
			if r.Join.KernelCarried != 0 {
				t.Errorf("kexec %d: a kernel without CONFIG_IMA_KEXEC carried %d records", i, r.Join.KernelCarried)
			}
			if sc.window && r.Join.Reconstructed == 0 {
				t.Errorf("kexec %d: the kexec-window records were not reconstructed", i)
			}
		default:
			// A 7.2 drain deletes what it stored: with no window records the kernel has
			// nothing left to carry.
			empty := sc.drainBefore && !sc.window && deletes(sc.profile)
			if (r.Join.KernelCarried == 0) != empty {
				t.Errorf("kexec %d: %s carried %d records", i, sc.profile, r.Join.KernelCarried)
			}
			if r.Join.Reconstructed != 0 {
				t.Errorf("kexec %d: %d records reconstructed although the kernel carried the window", i, r.Join.Reconstructed)
			}
		}
		e.mustVerify(fmt.Sprintf("after kexec %d", i))
	}
	// More work and a drain in the last boot still verify, and the exported chain passes
	// evmctl over every record.
	e.work(5)
	e.mustDrain("auto")
	e.mustVerify("end")
	e.exportEvmctl()
}

func TestRejoinMatrix(t *testing.T) {
	var scs []rejoinScenario
	for _, p := range []struct {
		profile kmodel.Profile
		flush   bool
	}{{kmodel.ProfileDebian61, false}, {kmodel.Profile61IMAKexec, false}, {kmodel.Profile616, false}, {kmodel.Profile72, false}, {kmodel.Profile72, true}, {kmodel.Profile72Trim, false}} {
		for _, kexecs := range []int{0, 1, 3} {
			for _, drain := range []bool{true, false} {
				for _, window := range []bool{true, false} {
					if kexecs == 0 && (!drain || !window) {
						continue
					}
					scs = append(scs, rejoinScenario{p.profile, p.flush, kexecs, drain, window})
				}
			}
		}
	}
	if testing.Short() {
		scs = scs[:4]
	}
	for _, sc := range scs {
		t.Run(sc.name(), func(t *testing.T) { runRejoinScenario(t, sc) })
	}
}

// TestRejoinColdBoot: a store of another TPM power cycle is archived, never joined.
func TestRejoinColdBoot(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian61})
	e.work(5)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	if err := e.k.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	e.work(3)
	v, cause, err := verdictOf(Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()}))
	if err != nil || !errors.Is(cause, ErrBindingMismatch) {
		t.Fatalf("verify of the old store after a cold boot: %+v %v %v", v, cause, err)
	}
	r, err := e.rejoin(nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Archived == "" || !r.NewChain {
		t.Fatalf("cold boot: archived %q, new chain %v", r.Archived, r.NewChain)
	}
	e.mustVerify("after cold boot")
}

// TestRejoinWindowUnpredictable: a record measured after the last drain that the handoff
// does not describe cannot be reconstructed: rejoin fails, names the gap, writes nothing.
func TestRejoinWindowUnpredictable(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian61})
	e.work(4)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	e.mustDrain("auto")
	kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("k")}
	initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("i")}
	if _, err := e.k.Read("/etc/read-after-drain", []byte("unpredicted")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.k.KexecLoadFiles(kernel, initrd, "console=ttyS0"); err != nil {
		t.Fatal(err)
	}
	if err := e.k.KexecExecute(); err != nil {
		t.Fatal(err)
	}
	before, _ := OpenStore(e.store)
	n := len(before.Entries())
	_, err := e.rejoin(windowInputs(kernel, initrd, "console=ttyS0"))
	var je *JoinError
	if !errors.As(err, &je) || je.Candidates < 2 {
		t.Fatalf("want a JoinError after trying candidates, got %v", err)
	}
	var re *serialize.ReplayError
	if !errors.As(err, &re) || re.PCR != 10 {
		t.Fatalf("the error should carry the replay mismatch of PCR 10: %v", err)
	}
	after, _ := OpenStore(e.store)
	if len(after.Entries()) != n {
		t.Fatal("a failed rejoin wrote to the store")
	}
}

// TestRejoinESTALE: on 7.2 a drain that meets ESTALE at D (kexec under way) leaves the
// staged records to the kernel, which carries them: rejoin must not count them twice.
func TestRejoinESTALE(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(5)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	e.work(7)
	kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("k")}
	initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("i")}
	if _, err := e.k.KexecLoadFiles(kernel, initrd, "console=ttyS0"); err != nil {
		t.Fatal(err)
	}
	// The drain stages and persists; the reboot notifiers run before its D.
	_, err := e.drain("staged", func(s Step, _ uint64) error {
		if s == StepManifestSynced {
			if _, err := e.k.Suspend(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("drain meeting ESTALE: %v", err)
	}
	s, _ := OpenStore(e.store)
	bs := s.Boots()[len(s.Boots())-1]
	if !bs.Carried {
		t.Fatal("the store does not record that the kernel carries the staged records")
	}
	if err := e.k.KexecExecute(); err != nil {
		t.Fatal(err)
	}
	r, err := e.rejoin(windowInputs(kernel, initrd, "console=ttyS0"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Join.Duplicated == 0 {
		t.Fatalf("the carried staged records were not recognised as stored: %+v", r.Join)
	}
	e.mustVerify("after ESTALE kexec")
}

// TestRejoinAfterBusyFirstDrain: a reader holding the 7.2 list file makes the first drain
// of a fresh store fail with EBUSY after it created the store, which then holds only its
// header. That is an empty chain: rejoin starts the chain from the live list, never panics.
func TestRejoinAfterBusyFirstDrain(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(9)
	dir, err := e.paths.IMADir()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, "binary_runtime_measurements_sha256"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Drain(t.Context(), DrainOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), BusyTimeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrBusy) {
		f.Close()
		t.Fatalf("first drain with a reader held: %v, want ErrBusy", err)
	}
	s, err := OpenStore(e.store)
	if err != nil || !s.Exists() || len(s.Entries()) != 1 {
		f.Close()
		t.Fatalf("after the failed drain the store must hold only its header: %v, %d entries", err, len(s.Entries()))
	}
	f.Close()
	n := uint64(len(e.k.Staged()) + len(e.k.List()))
	r, err := e.rejoin(nil)
	if err != nil {
		t.Fatalf("rejoin on a header-only store: %v", err)
	}
	if !r.NewChain || r.Verify == nil || r.Verify.Records != n || r.Drain == nil || r.Drain.Stored != n {
		t.Fatalf("rejoin on a header-only store: %+v, want a new chain of the %d live records", r, n)
	}
	e.mustVerify("after rejoin")
}
