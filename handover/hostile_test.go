// This file is long on purpose: it is one table of attacks on the store (every field of the
// manifest and segment format, every PCR and bank) with the three ways in (verify, rejoin
// after a kexec, the hook); splitting the table would hide a missing case. The forger that
// re-derives every derived field is in hostile_forger_test.go.

package handover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// The hostile-store suite: an attacker with root rewrites store files AND recomputes every
// derived field (segment sizes and SHA-256s, boot hashes, replayed pcrs, sequence numbers,
// manifest prev hashes), so only the TPM can tell. Every case must end NOT VERIFIED, or be
// an exact no-op: the log that verifies is the true one, record for record. Never
// "verified" for a log that differs. The same cases run through verify, through rejoin
// after a kexec on every kernel profile, and through the initramfs hook.

// hostileCase is one attack: a mutation of the forger (records or fields); write
// re-derives the rest. skip says why a case does not apply to a store (no deletion, no
// duplicate segment), "" when it does.
type hostileCase struct {
	name string
	mut  func(t testing.TB, f *forger)
	post func(f *forger)
	skip func(f *forger) string
}

func needDeletion(f *forger) string {
	if len(f.deletions()) == 0 {
		return "no deletion entry in this store"
	}
	return ""
}

func needDup(f *forger) string {
	if f.dup() == nil {
		return "no duplicate segment in this store"
	}
	return ""
}

func needJoin(f *forger) string {
	if len(f.joins()) == 0 {
		return "no join entry in this store"
	}
	return ""
}

func needSegs(n int) func(f *forger) string {
	return func(f *forger) string {
		if len(f.segs(true)) < n {
			return fmt.Sprintf("fewer than %d chain segments", n)
		}
		return ""
	}
}

// hostileCases: every field of the manifest and of the segment format, every PCR and bank.
func hostileCases() []hostileCase {
	last := func(f *forger) []serialize.Record { return f.recs[f.seg(-1).Number] }
	setLast := func(f *forger, recs []serialize.Record) { f.recs[f.seg(-1).Number] = recs }
	cases := []hostileCase{
		{name: "rederive-only", mut: func(testing.TB, *forger) {}},
		// Header.
		{name: "header-no-banks", mut: func(_ testing.TB, f *forger) { f.header().Banks = nil }},
		{name: "header-no-banks+invented-pcr10", mut: func(t testing.TB, f *forger) {
			f.header().Banks = nil
			setLast(f, append(last(f), invent(t, 10, "/usr/bin/evil")))
		}},
		{name: "header-bank-dropped+sha256-only-lie", mut: func(_ testing.TB, f *forger) { f.header().Banks = []string{"sha1"} }},
		{name: "header-bank-added", mut: func(_ testing.TB, f *forger) {
			f.header().Banks = append(f.header().Banks, "sha512")
		}},
		{name: "header-bank-bogus", mut: func(_ testing.TB, f *forger) { f.header().Banks = []string{"md4"} }},
		{name: "header-reset-count", mut: func(_ testing.TB, f *forger) { f.header().TPM.ResetCount++ }},
		{name: "header-store-id", mut: func(_ testing.TB, f *forger) { f.header().StoreID = "forged" }},
		// Records: every PCR.
		{name: "invented-record-pcr10", mut: func(t testing.TB, f *forger) {
			setLast(f, append(last(f), invent(t, 10, "/usr/bin/evil")))
		}},
		{name: "invented-record-pcr11-pcrs-omit-11", mut: func(t testing.TB, f *forger) {
			setLast(f, append(last(f), invent(t, 11, "/usr/bin/evil")))
		}, post: func(f *forger) { f.pcrsWithout(11) }},
		{name: "invented-record-pcr11-first-segment", mut: func(t testing.TB, f *forger) {
			n := f.seg(0).Number
			f.recs[n] = append(f.recs[n], invent(t, 11, "/usr/bin/evil"))
		}, post: func(f *forger) { f.pcrsWithout(11) }},
		// The same with no header banks, so that no recorded value is compared with the
		// replay: only the TPM can tell.
		{name: "header-no-banks+invented-pcr11", mut: func(t testing.TB, f *forger) {
			f.header().Banks = nil
			setLast(f, append(last(f), invent(t, 11, "/usr/bin/evil")))
		}},
		{name: "header-no-banks+invented-pcr11-first-segment", mut: func(t testing.TB, f *forger) {
			f.header().Banks = nil
			n := f.seg(0).Number
			f.recs[n] = append(f.recs[n], invent(t, 11, "/usr/bin/evil"))
		}},
		{name: "header-no-banks+invented-every-pcr-but-10-first-segment", mut: func(t testing.TB, f *forger) {
			f.header().Banks = nil
			n := f.seg(0).Number
			for p := uint32(0); p < serialize.MaxPCR; p++ {
				if p != 10 {
					f.recs[n] = append(f.recs[n], invent(t, p, fmt.Sprint("/evil/", p)))
				}
			}
		}},
		{name: "header-no-banks+record-pcr-moved-10-to-16", mut: func(_ testing.TB, f *forger) {
			f.header().Banks = nil
			r := f.recs[f.seg(0).Number]
			r[len(r)-1].PCR = 16
		}},
		{name: "invented-record-pcr0", mut: func(t testing.TB, f *forger) {
			setLast(f, append(last(f), invent(t, 0, "firmware")))
		}, post: func(f *forger) { f.pcrsWithout(0) }},
		{name: "invented-record-pcr23", mut: func(t testing.TB, f *forger) {
			setLast(f, append(last(f), invent(t, 23, "/usr/bin/evil")))
		}, post: func(f *forger) { f.pcrsWithout(23) }},
		{name: "invented-records-every-pcr-but-10", mut: func(t testing.TB, f *forger) {
			for p := uint32(0); p < serialize.MaxPCR; p++ {
				if p != 10 {
					setLast(f, append(last(f), invent(t, p, fmt.Sprint("/evil/", p))))
				}
			}
		}, post: func(f *forger) {
			for p := uint32(0); p < serialize.MaxPCR; p++ {
				if p != 10 {
					f.pcrsWithout(p)
				}
			}
		}},
		{name: "record-removed", mut: func(_ testing.TB, f *forger) { r := last(f); setLast(f, r[:len(r)-1]) }},
		{name: "record-edited", mut: func(t testing.TB, f *forger) {
			r := last(f)
			rec := invent(t, r[len(r)-1].PCR, "/usr/bin/edited")
			r[len(r)-1] = rec
		}},
		{name: "records-reordered", mut: func(_ testing.TB, f *forger) {
			r := last(f)
			if len(r) >= 2 {
				r[0], r[1] = r[1], r[0]
			}
		}},
		{name: "violation-invented", mut: func(_ testing.TB, f *forger) {
			r := last(f)
			v := r[len(r)-1].Clone()
			v.Digest = make([]byte, len(v.Digest))
			setLast(f, append(r, v))
		}},
		{name: "record-pcr-moved-10-to-11", mut: func(_ testing.TB, f *forger) {
			r := last(f)
			r[len(r)-1].PCR = 11
		}, post: func(f *forger) { f.pcrsWithout(11) }},
		{name: "segment-dropped", skip: needSegs(2), mut: func(_ testing.TB, f *forger) {
			n := f.seg(1).Number
			for i, e := range f.entries {
				if e.Segment != nil && e.Segment.Number == n {
					f.entries = append(f.entries[:i], f.entries[i+1:]...)
					break
				}
			}
		}},
		{name: "segments-emptied", mut: func(_ testing.TB, f *forger) {
			for _, sg := range f.segs(true) {
				f.recs[sg.Number] = nil
			}
		}},
		// Wholly forged: every record invented, a header with no banks.
		{name: "wholly-forged-store", mut: func(t testing.TB, f *forger) {
			f.header().Banks = nil
			for i, sg := range f.segs(false) {
				var recs []serialize.Record
				for j := range f.recs[sg.Number] {
					recs = append(recs, invent(t, 10, fmt.Sprintf("/forged/%d/%d", i, j)))
				}
				f.recs[sg.Number] = recs
			}
		}},
		// Segment fields.
		{name: "pcrs-emptied", mut: func(testing.TB, *forger) {}, post: func(f *forger) {
			for _, sg := range f.segs(false) {
				sg.PCRs = nil
			}
		}},
		{name: "pcrs-lie", mut: func(testing.TB, *forger) {}, post: func(f *forger) {
			for _, sg := range f.segs(false) {
				pm := pcrsMap(f.t, sg.PCRs)
				for _, m := range pm {
					for b := range m {
						m[b] = strings.Repeat("ab", len(m[b])/2)
					}
				}
				sg.PCRs = mapPCRs(pm)
			}
		}},
		{name: "scheme-pad", mut: func(_ testing.TB, f *forger) { f.seg(-1).Scheme = "pad" }},
		{name: "scheme-bogus", mut: func(_ testing.TB, f *forger) { f.seg(0).Scheme = "bogus" }},
		{name: "scheme-bogus-last", mut: func(_ testing.TB, f *forger) { f.seg(-1).Scheme = "bogus" }},
		{name: "held-raised", mut: func(_ testing.TB, f *forger) { f.seg(-1).Held += 5 }},
		{name: "retained-raised", mut: func(_ testing.TB, f *forger) { f.seg(-1).Retained += 3 }},
		{name: "retained-zeroed", mut: func(_ testing.TB, f *forger) {
			for _, sg := range f.segs(false) {
				sg.Retained = 0
			}
		}},
		{name: "source-changed", mut: func(_ testing.TB, f *forger) { f.seg(-1).Source = SourceReconstructed }},
		{name: "source-bogus", mut: func(_ testing.TB, f *forger) { f.seg(0).Source = "forged" }},
		{name: "backend-changed", mut: func(_ testing.TB, f *forger) { f.seg(-1).Backend = "trim-log" }},
		{name: "ima-hash-changed", mut: func(_ testing.TB, f *forger) { f.seg(-1).IMAHash = "sha1" }},
		{name: "kernel-banks-changed", mut: func(_ testing.TB, f *forger) { f.seg(-1).KernelBanks = []string{"sha1"} }},
		{name: "byte-order-big", mut: func(_ testing.TB, f *forger) { f.seg(-1).ByteOrder = "big" }},
		{name: "flush-htable-flipped", mut: func(_ testing.TB, f *forger) { f.seg(-1).FlushHtable = "on" }},
		{name: "segment-tpm-binding", mut: func(_ testing.TB, f *forger) { f.seg(-1).TPM.ResetCount += 7 }},
		{name: "first-seq-lie", mut: func(testing.TB, *forger) {}, post: func(f *forger) { f.seg(-1).FirstSeq += 2 }},
		{name: "first-index-lie", mut: func(testing.TB, *forger) {}, post: func(f *forger) { f.seg(-1).Boot.FirstIndex += 2 }},
		{name: "count-lie", mut: func(testing.TB, *forger) {}, post: func(f *forger) { f.seg(-1).Count++ }},
		{name: "boot-hash-lie", mut: func(testing.TB, *forger) {}, post: func(f *forger) {
			f.seg(-1).BootSum = strings.Repeat("00", 32)
		}},
		// Boot ids and generations.
		{name: "boot-id-renamed-last", mut: func(_ testing.TB, f *forger) {
			old := f.seg(-1).Boot.BootID
			for _, sg := range f.segs(false) {
				if sg.Boot.BootID == old {
					sg.Boot.BootID = "00000000-0000-0000-0000-000000000000"
				}
			}
		}},
		{name: "boot-id-merged", mut: func(_ testing.TB, f *forger) {
			first := f.seg(0).Boot.BootID
			for _, sg := range f.segs(false) {
				sg.Boot.BootID = first
			}
			for _, d := range f.deletions() {
				d.BootID = first
			}
		}},
		{name: "generation-changed", mut: func(_ testing.TB, f *forger) { f.seg(-1).Boot.Generation += 3 }},
		{name: "generation-all-zero", mut: func(_ testing.TB, f *forger) {
			for _, sg := range f.segs(false) {
				sg.Boot.Generation = 0
			}
		}},
		{name: "kernel-release-changed", mut: func(_ testing.TB, f *forger) { f.seg(-1).Boot.KernelRelease = "forged" }},
		// Deleted ranges.
		{name: "deleted-through-beyond-stored", skip: needDeletion, mut: func(_ testing.TB, f *forger) {
			d := f.deletions()
			d[len(d)-1].Through += 1000
		}},
		{name: "deleted-through-lowered", skip: needDeletion, mut: func(_ testing.TB, f *forger) {
			d := f.deletions()
			if d[len(d)-1].Through > 0 {
				d[len(d)-1].Through--
			}
		}},
		{name: "deleted-through-raised", skip: needDeletion, mut: func(_ testing.TB, f *forger) {
			d := f.deletions()
			d[len(d)-1].Through++
		}},
		{name: "deleted-carried-flipped", skip: needDeletion, mut: func(_ testing.TB, f *forger) {
			for _, d := range f.deletions() {
				d.Carried = !d.Carried
			}
		}},
		{name: "deleted-removed", skip: needDeletion, mut: func(_ testing.TB, f *forger) {
			for i := len(f.entries) - 1; i > 0; i-- {
				if f.entries[i].Deleted != nil {
					f.entries = append(f.entries[:i], f.entries[i+1:]...)
					break
				}
			}
		}},
		{name: "deleted-invented", mut: func(_ testing.TB, f *forger) {
			sg := f.seg(-1)
			f.entries = append(f.entries, Entry{Type: EntryDeleted, Time: f.entries[0].Time,
				Deleted: &Deletion{BootID: sg.Boot.BootID, Through: sg.Boot.FirstIndex + sg.Count, Method: BackendDeleteN}})
		}},
		{name: "deleted-other-boot", skip: needDeletion, mut: func(_ testing.TB, f *forger) {
			for _, d := range f.deletions() {
				d.BootID = f.seg(0).Boot.BootID
			}
		}},
		// Duplicate claims.
		{name: "duplicate-claim-on-chain-segment", skip: needSegs(2), mut: func(_ testing.TB, f *forger) {
			sg := f.seg(1)
			sg.Duplicates = &DupRef{BootID: f.seg(0).Boot.BootID, From: 0, To: sg.Count}
		}},
		{name: "duplicate-claim-removed", skip: needDup, mut: func(_ testing.TB, f *forger) { f.dup().Duplicates = nil }},
		{name: "duplicate-range-changed", skip: needDup, mut: func(_ testing.TB, f *forger) { f.dup().Duplicates.To++ }},
		{name: "duplicate-records-edited", skip: needDup, mut: func(t testing.TB, f *forger) {
			r := f.recs[f.dup().Number]
			r[len(r)-1] = invent(t, 10, "/usr/bin/evil")
		}},
		// Joins.
		{name: "join-removed", skip: needJoin, mut: func(_ testing.TB, f *forger) {
			for i := len(f.entries) - 1; i > 0; i-- {
				if f.entries[i].Join != nil {
					f.entries = append(f.entries[:i], f.entries[i+1:]...)
					break
				}
			}
		}},
		{name: "join-claims-changed", skip: needJoin, mut: func(_ testing.TB, f *forger) {
			for _, j := range f.joins() {
				j.KernelCarried += 2
				j.Duplicated++
				j.BootAggregateSeq += 3
				j.PrevBootID = "forged"
				j.PCRs = nil
			}
		}},
	}
	return cases
}

// trueLog is the log a verify of the store and the running kernel covers: the store's
// chain, then the kernel's held records past those the store says it retains, as Verify
// reads them. Its first n records are compared with the pristine store's.
func (e *kenv) trueLog(t testing.TB) []serialize.Record {
	t.Helper()
	s, err := OpenStore(e.store)
	if err != nil {
		t.Fatal(err)
	}
	cr := s.Reader()
	defer cr.Close()
	var out []serialize.Record
	for {
		rec, err := cr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read the chain of a verified store: %v", err)
		}
		out = append(out, rec.Clone())
	}
	ki, err := ReadKernelInfo(e.paths)
	if err != nil {
		t.Fatal(err)
	}
	skip := 0
	if bs := s.Boot(ki.BootID); bs != nil {
		skip = int(bs.Retained)
	}
	held := append(e.k.Staged(), e.k.List()...)
	if skip > len(held) {
		t.Fatalf("store retains %d records, kernel holds %d", skip, len(held))
	}
	return append(out, held[skip:]...)
}

// sameLog requires a verified log of n records to be the true log, whole.
func sameLog(t testing.TB, what string, truth, got []serialize.Record, n uint64) {
	t.Helper()
	if n != uint64(len(truth)) {
		t.Fatalf("%s: VERIFIED %d records, the true log has %d", what, n, len(truth))
	}
	if uint64(len(got)) < n {
		t.Fatalf("%s: VERIFIED %d records, the store and kernel give %d", what, n, len(got))
	}
	if !sameRecords(truth, got[:n]) {
		t.Fatalf("%s: VERIFIED a log that differs from the true one", what)
	}
}

// notVerifiedErr reports the errors the CLI maps to exit 1 (rejoinExit, notVerified).
func notVerifiedErr(err error) bool { return IsNotVerified(err) }

// runHostile applies every case to a copy of the pristine store and runs check on it.
func runHostile(t *testing.T, e *kenv, pristine string, check func(t *testing.T, c hostileCase)) {
	tally := map[string]int{}
	for _, c := range hostileCases() {
		ok := t.Run(c.name, func(t *testing.T) {
			os.RemoveAll(e.store)
			copyTree(t, pristine, e.store)
			f := loadForger(t, e.store)
			if c.skip != nil {
				if why := c.skip(f); why != "" {
					tally["n/a"]++
					t.Logf("not applicable: %s", why)
					return // not applicable to this store: nothing to mutate
				}
			}
			c.mut(t, f)
			f.post = c.post
			f.write()
			check(t, c)
		})
		if ok {
			tally["passed"]++
		}
	}
	t.Logf("hostile cases: %v", tally)
}

// TestHostileStoreVerify: every case through verify, on a chain over two kexecs (with
// reconstructed window records, carried duplicates or deletions, by profile).
func TestHostileStoreVerify(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec, kmodel.Profile616, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) {
			e := twoKexecs(t, p)
			pristine := t.TempDir()
			copyTree(t, e.store, pristine)
			truth := e.trueLog(t)
			stats := map[string]int{}
			runHostile(t, e, pristine, func(t *testing.T, c hostileCase) {
				v, cause, err := verdictOf(Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()}))
				switch {
				case err != nil:
					t.Fatalf("verify could not run (exit 2), want NOT VERIFIED or an exact no-op: %v", err)
				case cause != nil:
					if !errors.Is(&NotVerifiedError{Err: cause}, ErrNotVerified) {
						t.Fatal("not-verified error does not match ErrNotVerified")
					}
					stats["not verified"]++
					t.Logf("NOT VERIFIED: %v", cause)
				default:
					sameLog(t, "verify", truth, e.trueLog(t), v.Records)
					t.Logf("exact no-op: verified the true log of %d records", v.Records)
					stats["no-op"]++
				}
			})
			t.Logf("%s: %v", p, stats)
		})
	}
}

// kexecScene is a chain on a profile right after a kexec, before the new boot's rejoin:
// the store of the old boot (pristine) and the window the handoff describes.
func kexecScene(t *testing.T, p kmodel.Profile) (*kenv, *WindowInputs) {
	t.Helper()
	e := newKenv(t, kmodel.Config{Profile: p})
	e.work(6)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	e.work(5)
	e.mustDrain("auto")
	e.work(2)
	e.mustDrain("auto")
	kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("kernel")}
	initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("initrd 1")}
	cmdline := "console=ttyS0 gen=1"
	if _, err := e.k.KexecLoadFiles(kernel, initrd, cmdline); err != nil {
		t.Fatal(err)
	}
	if err := e.k.KexecExecute(); err != nil {
		t.Fatal(err)
	}
	e.work(3)
	return e, windowInputs(kernel, initrd, cmdline)
}

// rejoinSnapshot rejoins without deleting from the kernel (the drain after the join uses the
// snapshot backend), so every case meets the same kernel.
func (e *kenv) rejoinSnapshot(w *WindowInputs) (*RejoinResult, error) {
	return Rejoin(context.Background(), RejoinOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), Window: w, Backend: BackendSnapshot})
}

// TestHostileStoreRejoin: every case through rejoin after a kexec, on every profile.
func TestHostileStoreRejoin(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec, kmodel.Profile616, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) {
			e, w := kexecScene(t, p)
			pristine := t.TempDir()
			copyTree(t, e.store, pristine)
			if _, err := e.rejoinSnapshot(w); err != nil {
				t.Fatalf("pristine rejoin: %v", err)
			}
			truth := e.trueLog(t)
			stats := map[string]int{}
			runHostile(t, e, pristine, func(t *testing.T, c hostileCase) {
				r, err := e.rejoinSnapshot(w)
				switch {
				case err != nil && notVerifiedErr(err):
					stats["not verified"]++
					t.Logf("NOT VERIFIED: %v", err)
				case err != nil:
					t.Fatalf("rejoin could not run (exit 2), want NOT VERIFIED or an exact no-op: %v", err)
				default:
					sameLog(t, "rejoin", truth, e.trueLog(t), r.Verify.Records)
					t.Logf("exact no-op: verified the true log of %d records", r.Verify.Records)
					stats["no-op"]++
				}
			})
			t.Logf("%s: %v", p, stats)
		})
	}
}

// hookRejoiner is the command's adapter of Rejoin to the initramfs hook, as in
// cmd/imakexec (a test cannot import package main).
type testHookRejoiner struct {
	e *kenv
	w *WindowInputs
	r *RejoinResult
}

func (h *testHookRejoiner) Rejoin(ctx context.Context, _ *initramfs.Handoff, storeDir string) (*initramfs.Verdict, error) {
	res, err := Rejoin(ctx, RejoinOptions{Paths: h.e.paths, StoreDir: storeDir, TPM: h.e.k.TPM(), Window: h.w, Backend: BackendSnapshot})
	if err != nil {
		return &initramfs.Verdict{Summary: err.Error()}, nil
	}
	h.r = res
	return &initramfs.Verdict{Verified: true, Summary: fmt.Sprintf("%d records", res.Verify.Records)}, nil
}

// handoffRoot writes the store as the old kernel's handoff archive unpacked in a rootfs.
func handoffRoot(t testing.TB, store string) string {
	t.Helper()
	names, err := initramfs.ListStore(store)
	if err != nil {
		t.Fatal(err)
	}
	var files []initramfs.StoreFile
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(store, n))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, initramfs.StoreFile{Name: n, Data: b})
	}
	h := &initramfs.Handoff{Format: initramfs.HandoffFormat, Version: initramfs.HandoffVersion,
		OldKernel: initramfs.OldKernel{IMAHash: "sha256", Templates: []string{"ima-ng"}}}
	img, err := initramfs.HandoffArchive(h, files)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	_, err = initramfs.Walk(bytes.NewReader(img), int64(len(img)), initramfs.Limits{}, func(en *initramfs.Entry, data io.Reader) error {
		p := filepath.Join(root, en.Name)
		if en.Type() == initramfs.ModeDir {
			return os.MkdirAll(p, 0o700)
		}
		b, err := io.ReadAll(data)
		if err != nil {
			return err
		}
		return os.WriteFile(p, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// TestHostileStoreHook: every case through the initramfs hook (initramfs.RunHook with the
// command's rejoin adapter) after a kexec on every profile: the carried store is the
// forged one.
func TestHostileStoreHook(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec, kmodel.Profile616, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) { hostileHook(t, p) })
	}
}

func hostileHook(t *testing.T, p kmodel.Profile) {
	e, w := kexecScene(t, p)
	pristine := t.TempDir()
	copyTree(t, e.store, pristine)
	hook := func(t *testing.T) (*initramfs.HookResult, *testHookRejoiner, string) {
		root := handoffRoot(t, e.store)
		rj := &testHookRejoiner{e: e, w: w}
		res := initramfs.RunHook(context.Background(), initramfs.HookOptions{Root: root}, rj)
		return res, rj, filepath.Join(root, "run/imakexec")
	}
	res, rj, store := hook(t)
	if !strings.HasPrefix(res.Line, "imakexec: VERIFIED") {
		t.Fatalf("pristine hook: %s", res.Line)
	}
	e.store = store
	truth := e.trueLog(t)
	_ = rj
	stats := map[string]int{}
	e.store = filepath.Join(t.TempDir(), "store")
	runHostile(t, e, pristine, func(t *testing.T, c hostileCase) {
		res, rj, store := hook(t)
		if !strings.HasPrefix(res.Line, "imakexec: VERIFIED") {
			if !strings.HasPrefix(res.Line, "imakexec: NOT VERIFIED") {
				t.Fatalf("hook verdict %q", res.Line)
			}
			stats["not verified"]++
			t.Log(res.Line)
			return
		}
		saved := e.store
		e.store = store
		defer func() { e.store = saved }()
		sameLog(t, "hook", truth, e.trueLog(t), rj.r.Verify.Records)
		t.Logf("exact no-op: %s", res.Line)
		stats["no-op"]++
	})
	t.Logf("hook %s: %v", p, stats)
}
