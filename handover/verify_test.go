package handover

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

// twoKexecs builds a chain over two kexecs (with reconstructed window records on Debian).
func twoKexecs(t *testing.T, p kmodel.Profile) *kenv {
	t.Helper()
	e := newKenv(t, kmodel.Config{Profile: p})
	e.work(6)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		e.work(5)
		e.mustDrain("auto")
		kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("kernel")}
		initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte(fmt.Sprint("initrd ", i))}
		cmdline := fmt.Sprint("console=ttyS0 gen=", i)
		if _, err := e.k.KexecLoadFiles(kernel, initrd, cmdline); err != nil {
			t.Fatal(err)
		}
		if err := e.k.KexecExecute(); err != nil {
			t.Fatal(err)
		}
		if _, err := e.rejoin(windowInputs(kernel, initrd, cmdline)); err != nil {
			t.Fatal(err)
		}
	}
	e.work(4)
	e.mustDrain("auto")
	e.work(3) // live records not stored yet
	e.mustVerify("built")
	return e
}

func (e *kenv) verifyErr() error {
	e.t.Helper()
	_, cause, err := verdictOf(Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()}))
	if err != nil {
		e.t.Fatalf("verify could not run: %v", err)
	}
	return cause
}

// verdictOf splits Verify's answer: the result (partial when it does not verify), why it
// does not verify (nil when it does), and an error that kept it from running.
func verdictOf(v *Verified, err error) (*VerifyResult, error, error) {
	var nv *NotVerifiedError
	switch {
	case errors.As(err, &nv):
		if nv.Err == nil || nv.Result == nil {
			return nil, nil, fmt.Errorf("not verified without a reason or result: %#v", nv)
		}
		return nv.Result, nv.Err, nil
	case err != nil:
		return nil, nil, err
	case v == nil:
		return nil, nil, errors.New("no proof and no error")
	}
	return &v.VerifyResult, nil, nil
}

// TestVerifyFaults: every kind of damage to the store is caught and named; verify never
// reports success for it.
func TestVerifyFaults(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec, kmodel.Profile616, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) { verifyFaults(t, p) })
	}
}

func verifyFaults(t *testing.T, p kmodel.Profile) {
	e := twoKexecs(t, p)
	pristine := t.TempDir()
	copyTree(t, e.store, pristine)
	s, _ := OpenStore(e.store)
	segs := s.ChainSegments()
	if len(segs) < 4 {
		t.Fatalf("only %d segments", len(segs))
	}
	mid := segs[len(segs)/2]
	manifest := filepath.Join(e.store, manifestName)
	lines := func() []string {
		b, _ := os.ReadFile(manifest)
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	writeLines := func(ls []string) { os.WriteFile(manifest, []byte(strings.Join(ls, "\n")+"\n"), 0o600) }
	for _, tc := range []struct {
		name   string
		damage func()
		want   string // in the error
	}{
		{"segment-removed", func() { os.Remove(filepath.Join(e.store, mid.File)) }, "missing"},
		{"record-flipped", func() {
			p := filepath.Join(e.store, mid.File)
			b, _ := os.ReadFile(p)
			b[len(b)-3] ^= 0x40
			os.WriteFile(p, b, 0o600)
		}, mid.File},
		{"segments-swapped", func() {
			a, b := filepath.Join(e.store, segs[1].File), filepath.Join(e.store, segs[2].File)
			os.Rename(a, a+".x")
			os.Rename(b, a)
			os.Rename(a+".x", b)
		}, "segment"},
		{"manifest-line-removed", func() {
			ls := lines()
			writeLines(append(ls[:2], ls[3:]...))
		}, "lines removed"},
		{"manifest-lines-reordered", func() {
			ls := lines()
			ls[2], ls[3] = ls[3], ls[2]
			writeLines(ls)
		}, "reordered"},
		{"manifest-edited", func() {
			ls := lines()
			ls[len(ls)-2] = strings.Replace(ls[len(ls)-2], `"count":`, `"count":1`, 1)
			writeLines(ls)
		}, "manifest"},
		{"segment-duplicated", func() {
			// A segment's records appended again under a new, consistent manifest line.
			dupSegment(t, e.store, mid)
		}, "PCR 10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(e.store)
			copyTree(t, pristine, e.store)
			if err := e.verifyErr(); err != nil {
				t.Fatalf("pristine copy does not verify: %v", err)
			}
			tc.damage()
			err := e.verifyErr()
			if err == nil {
				t.Fatal("damaged store verified")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %q", err, tc.want)
			}
		})
	}
}

// dupSegment appends a copy of a segment as the next segment with a manifest line that
// chains correctly: only the replay against the TPM can catch it.
func dupSegment(t *testing.T, dir string, sg Segment) {
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Unlock()
	recs, err := readSegment(s, &sg)
	if err != nil {
		t.Fatal(err)
	}
	segs := s.ChainSegments()
	last := segs[len(segs)-1]
	banks, err := headerBanks(s.Header())
	if err != nil {
		t.Fatal(err)
	}
	r, _ := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Start: mustPCRs(t, last.PCRs)})
	n := sg
	old := lastSegmentOf(s, sg.Boot.BootID)
	n.FirstSeq, n.Boot.FirstIndex = last.End(), old.Boot.FirstIndex+old.Count
	if _, err := s.writeSegment(n, recs, old.BootHash, r, nil); err != nil {
		t.Fatal(err)
	}
}

func mustPCRs(t *testing.T, m json.RawMessage) serialize.PCRValues {
	v, err := decodePCRs(m)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVerifyOtherPowerCycle: a store moved to a TPM of another power cycle does not verify.
func TestVerifyOtherPowerCycle(t *testing.T) {
	e := twoKexecs(t, kmodel.Profile616)
	if err := e.k.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	if err := e.verifyErr(); !errors.Is(err, ErrBindingMismatch) {
		t.Fatalf("want ErrBindingMismatch, got %v", err)
	}
}

// TestExportEvmctl: the exported chain (store + live list) passes evmctl ima_measurement
// against the TPM's PCRs over every record, for every profile, after two kexecs.
func TestExportEvmctl(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.ProfileDebian61, kmodel.Profile61IMAKexec, kmodel.Profile616, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) {
			e := twoKexecs(t, p)
			res := e.exportEvmctl()
			pcrs, err := e.k.PCRs(allPCRs()...)
			if err != nil {
				t.Fatal(err)
			}
			// Incremental export: the state after the first half plus the second half
			// replays to the same PCRs.
			half := res.Records / 2
			var rest bytes.Buffer
			w2 := serialize.NewBinaryWriter(&rest, binary.LittleEndian, serialize.SHA1, nil)
			r2, err := Export(context.Background(), ExportOptions{ChainOptions: ChainOptions{Paths: e.paths, StoreDir: e.store}, From: half}, w2.Write)
			if err != nil {
				t.Fatal(err)
			}
			w2.Flush()
			rp, _ := serialize.NewReplayer(serialize.ReplayOptions{Banks: r2.Banks, Start: r2.State})
			if err := rp.AddAll(serialize.NewBinaryReader(&rest, binary.LittleEndian, 20)); err != nil {
				t.Fatal(err)
			}
			if _, err := rp.Result().Verify(restrict(pcrs, map[uint32]bool{10: true}, r2.Banks)); err != nil {
				t.Fatalf("incremental export: %v", err)
			}
		})
	}
}

// exportEvmctl exports the chain and checks it with evmctl ima_measurement against the
// TPM's PCRs over every record (evmctl 1.4 accepts a matching prefix, so the entry count
// is compared), and that it is what verify proved.
func (e *kenv) exportEvmctl() *ExportResult {
	t := e.t
	t.Helper()
	var list bytes.Buffer
	w := serialize.NewBinaryWriter(&list, binary.LittleEndian, serialize.SHA1, nil)
	res, err := Export(context.Background(), ExportOptions{ChainOptions: ChainOptions{Paths: e.paths, StoreDir: e.store}}, w.Write)
	if err != nil {
		t.Fatal(err)
	}
	w.Flush()
	v := e.mustVerify("export")
	if res.Records != v.Records {
		t.Fatalf("exported %d records, verify proved %d", res.Records, v.Records)
	}
	pcrs, err := e.k.PCRs(allPCRs()...)
	if err != nil {
		t.Fatal(err)
	}
	testenv.EvmctlWhole(t, list.Bytes(), pcrs, int(res.Records))
	return res
}

// racingTPM measures one more record right after answering the first PCR_Read: the list
// then runs ahead of the PCR values verify read (IMA extends in list order). With stale set, every later
// PCR_Read gets that first answer again, as a TPM the record never reached would.
type racingTPM struct {
	e     *kenv
	seen  map[string][]byte // first answer to each PCR_Read command
	raced bool
	stale bool
}

func (r *racingTPM) Send(cmd []byte) ([]byte, error) {
	const pcrRead = 0x0000017E
	isRead := len(cmd) >= 10 && binary.BigEndian.Uint32(cmd[6:10]) == pcrRead
	if r.seen == nil {
		r.seen = map[string][]byte{}
	}
	if old, ok := r.seen[string(cmd)]; isRead && ok && r.stale {
		return old, nil
	}
	rsp, err := r.e.k.TPM().Send(cmd)
	if isRead && err == nil {
		if _, ok := r.seen[string(cmd)]; !ok {
			r.seen[string(cmd)] = rsp
		}
	}
	if isRead && !r.raced && selectsPCR10(rsp) {
		r.raced = true
		if _, err := r.e.k.Exec("/usr/bin/late", []byte("measured after the PCR read")); err != nil {
			return nil, err
		}
	}
	return rsp, err
}

// selectsPCR10 reports whether a PCR_Read response holds a PCR 10 value: after the
// header and pcrUpdateCounter comes the TPML_PCR_SELECTION of the values returned.
func selectsPCR10(rsp []byte) bool {
	b := rsp[min(len(rsp), 14):]
	if len(b) < 4 {
		return false
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	for i := uint32(0); i < n && len(b) >= 3; i++ {
		size := int(b[2])
		if len(b) < 3+size {
			return false
		}
		if size > 1 && b[3+1]&(1<<2) != 0 {
			return true
		}
		b = b[3+size:]
	}
	return false
}

func TestVerifyRecordsAfterPCRRead(t *testing.T) {
	for _, stale := range []bool{false, true} {
		t.Run(fmt.Sprint("stale=", stale), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian61, Policy: noWindowPolicy})
			e.work(4)
			if _, err := e.rejoin(nil); err != nil {
				t.Fatal(err)
			}
			e.work(2)
			// The record lands after the first PCR_Read; when stale, a repeated PCR_Read
			// gets its first answer again.
			v, err := Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: &racingTPM{e: e, stale: stale}})
			if err != nil {
				t.Fatalf("verify: %+v %v", v, err)
			}
			if stale {
				if v.Extra != 1 || len(v.Warnings) == 0 {
					t.Fatalf("a record the TPM never saw must stay unproven: extra %d, warnings %v", v.Extra, v.Warnings)
				}
			} else if v.Extra != 0 {
				t.Fatalf("the record measured after the PCR read was not proven by the second read: extra %d", v.Extra)
			}
		})
	}
}

func allPCRs() []uint32 {
	out := make([]uint32, serialize.MaxPCR)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}

// restrict keeps the values of the given PCRs in the given banks.
func restrict(v serialize.PCRValues, pcrs map[uint32]bool, banks []serialize.Bank) serialize.PCRValues {
	out := serialize.PCRValues{}
	for p := range pcrs {
		for _, b := range banks {
			if d := v.Get(p, b.Name); d != nil {
				out.Set(p, b.Name, d)
			}
		}
	}
	return out
}

// TestVerifyGivenPCRs: with expected values given (--pcrs FILE), the banks compared are the
// banks given and every PCR a record touches must have a value in each, else NOT VERIFIED
// (ErrUncovered); an empty set proves nothing. The store's claims do not widen or narrow it.
func TestVerifyGivenPCRs(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian61})
	e.work(6)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	e.work(3)
	all, err := e.k.PCRs(allPCRs()...)
	if err != nil {
		t.Fatal(err)
	}
	given := func(banks []string, pcrs ...uint32) serialize.PCRValues {
		v := serialize.PCRValues{}
		for _, p := range pcrs {
			for _, b := range banks {
				v.Set(p, b, all.Get(p, b))
			}
		}
		return v
	}
	run := func(v serialize.PCRValues) (*VerifyResult, error) {
		t.Helper()
		res, cause, err := verdictOf(Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, PCRs: v}))
		if err != nil {
			t.Fatalf("verify could not run: %v", err)
		}
		return res, cause
	}
	pcrs0to10 := []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	// sha256 only (the boot_aggregate is sha256 here: ima_hash=sha256).
	res, cause := run(given([]string{"sha256"}, pcrs0to10...))
	if cause != nil {
		t.Fatalf("sha256 values of PCRs 0-10: %v", cause)
	}
	if len(res.Banks) != 1 || res.Banks[0].Name != "sha256" || len(res.NotCompared) == 0 {
		t.Fatalf("banks %v, not compared %q: want sha256 only, named", res.Banks, res.NotCompared)
	}
	if _, cause := run(serialize.PCRValues{}); !errors.Is(cause, ErrUncovered) {
		t.Fatalf("empty expected set: %v, want ErrUncovered", cause)
	}
	if _, cause := run(given([]string{"sha1", "sha256"}, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)); !errors.Is(cause, ErrUncovered) || !strings.Contains(cause.Error(), "PCR 10") {
		t.Fatalf("values without PCR 10: %v, want ErrUncovered naming PCR 10", cause)
	}
	// A record in PCR 11 the store invents, with a header listing no banks (so no recorded
	// value is compared with the replay): the given values have no PCR 11, so it cannot be
	// proven.
	f := loadForger(t, e.store)
	f.header().Banks = nil
	n := f.seg(-1).Number
	f.recs[n] = append(f.recs[n], invent(t, 11, "/usr/bin/evil"))
	f.post = func(f *forger) { f.pcrsWithout(11) }
	f.write()
	if _, cause := run(given([]string{"sha1", "sha256"}, pcrs0to10...)); !errors.Is(cause, ErrUncovered) || !strings.Contains(cause.Error(), "PCR 11") {
		t.Fatalf("invented PCR 11 record with values for PCRs 0-10: %v, want ErrUncovered naming PCR 11", cause)
	}
	if _, cause := run(given([]string{"sha1", "sha256"}, allPCRs()...)); cause == nil {
		t.Fatal("invented PCR 11 record verified against the TPM's PCR 11")
	}
}
