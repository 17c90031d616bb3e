package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/serialize"
)

// The trust rule, in one place: what a verdict compares comes from the TPM and from the
// records, never from the store. An attacker with root can rewrite every store file and
// recompute every derived field (sizes, SHA-256s, prev hashes, replayed pcrs, boot hashes),
// so the store's banks and PCR lists are hints for finding a join, never what a verdict
// rests on. Verify, rejoin's candidate joins, --pcrs input and the initramfs hook (through
// Rejoin) all prove records with a prover over an expectation built here.

// ErrUncovered marks records that extend a PCR, or need a bank, for which there is no
// expected value: such a record cannot be proven, so the log does not verify.
var ErrUncovered = errors.New("expected PCR values do not cover the records")

// expectation is what a verdict compares a replay with: the banks compared and the expected
// value of every PCR in them.
type expectation struct {
	banks  []serialize.Bank
	values serialize.PCRValues
	// alloc[bank name][pcr] reports the TPM's allocation (TPM input); nil when the values
	// were given by the caller (--pcrs), and then only those values exist.
	alloc map[string]*[serialize.MaxPCR]bool
	// notCompared names each bank (or PCR of a bank) left out, with the reason.
	notCompared []string
	tpm         transport.TPM
	hint        []uint32
}

// tpmExpectation reads what a verdict compares from the TPM: every bank with a PCR allocated
// (the kernel extends each of them for every record: ima_pcr_extend, 7.2), and every
// allocated PCR in it. The PCRs in hint (where IMA is expected to extend: PCR 10 and what
// the store says) are read first, in as few TPM2_PCR_Read commands as the TPM allows (eight
// digests each), so they are one point of the log: IMA extends every bank of a record under
// one lock (ima_extend_list_mutex). The others do not change unless a record extends them,
// and a value read a little late there only makes the replay fail, never pass.
// A bank the kernel extends but this package cannot compute (sm3) is named, not compared.
func tpmExpectation(t transport.TPM, hint []uint32) (*expectation, error) {
	allocs, err := PCRAllocation(t)
	if err != nil {
		return nil, err
	}
	e := &expectation{alloc: map[string]*[serialize.MaxPCR]bool{}, tpm: t, hint: hint}
	for i := range allocs {
		a := &allocs[i]
		switch {
		case !a.Any():
			continue // nothing allocated: the kernel extends nothing there
		case a.Err != nil:
			e.notCompared = append(e.notCompared, fmt.Sprintf("TPM bank 0x%04x is not compared: %v", a.Alg, a.Err))
			continue
		case a.Bank.Name == serialize.SM3.Name:
			e.notCompared = append(e.notCompared, "TPM bank sm3 is not compared: the kernel extends SM3 template digests into it and imakexec does not implement SM3")
			continue
		}
		e.banks = append(e.banks, a.Bank)
		e.alloc[a.Bank.Name] = &a.PCRs
	}
	if len(e.banks) == 0 {
		return e, nil
	}
	if err := e.read(); err != nil {
		return nil, err
	}
	return e, nil
}

// read (re)reads the expected values from the TPM.
func (e *expectation) read() error {
	e.values = serialize.PCRValues{}
	merge := func(v serialize.PCRValues) {
		for p, m := range v {
			for b, d := range m {
				e.values.Set(p, b, d)
			}
		}
	}
	var inAll []uint32
	for _, p := range e.hint {
		if p < serialize.MaxPCR && !slices.Contains(inAll, p) && e.allocatedInAll(p) {
			inAll = append(inAll, p)
		}
	}
	if len(inAll) > 0 {
		v, err := ReadPCRs(e.tpm, e.banks, inAll)
		if err != nil {
			return err
		}
		merge(v)
	}
	for _, b := range e.banks {
		var rest []uint32
		for p := uint32(0); p < serialize.MaxPCR; p++ {
			if e.alloc[b.Name][p] && !slices.Contains(inAll, p) {
				rest = append(rest, p)
			}
		}
		if len(rest) == 0 {
			continue
		}
		v, err := ReadPCRs(e.tpm, []serialize.Bank{b}, rest)
		if err != nil {
			return err
		}
		merge(v)
	}
	return nil
}

func (e *expectation) allocatedInAll(p uint32) bool {
	for _, b := range e.banks {
		if !e.alloc[b.Name][p] {
			return false
		}
	}
	return true
}

// valuesExpectation takes expected values given by the caller (--pcrs FILE): the banks
// compared are the banks given; every PCR a record touches must have a value in each.
func valuesExpectation(v serialize.PCRValues) (*expectation, error) {
	e := &expectation{values: v}
	seen := map[string]bool{}
	for _, m := range v {
		for name, d := range m {
			if seen[name] {
				continue
			}
			seen[name] = true
			b, err := serialize.ParseBank(name)
			if err != nil {
				return nil, err
			}
			if b.Name == serialize.SM3.Name {
				e.notCompared = append(e.notCompared, "bank sm3 is not compared: imakexec does not implement SM3")
				continue
			}
			if len(d) != b.Size {
				return nil, fmt.Errorf("expected values: bank %s has a %d-byte value, want %d", name, len(d), b.Size)
			}
			e.banks = append(e.banks, b)
		}
	}
	sort.Slice(e.banks, func(i, j int) bool { return e.banks[i].TPMAlg < e.banks[j].TPMAlg })
	e.notCompared = append(e.notCompared, "the banks compared are those the expected values give, not read from a TPM")
	return e, nil
}

// empty reports an expectation that can prove nothing: no bank to compare.
func (e *expectation) empty() error {
	if len(e.banks) == 0 {
		return fmt.Errorf("%w: no PCR bank to compare (%s)", ErrUncovered, strings.Join(append([]string{"none given or allocated"}, e.notCompared...), "; "))
	}
	return nil
}

// cover checks that PCR p, which a record extends, has an expected value in every compared
// bank in which it can be extended, and in at least one bank. A PCR that the TPM has not
// allocated in a bank is not extended there by the kernel: it is named, not compared.
func (e *expectation) cover(p uint32) error {
	n := 0
	for _, b := range e.banks {
		if e.alloc != nil && !e.alloc[b.Name][p] {
			msg := fmt.Sprintf("PCR %d is not allocated in TPM bank %s: the kernel cannot extend it there; not compared", p, b.Name)
			if !slices.Contains(e.notCompared, msg) {
				e.notCompared = append(e.notCompared, msg)
			}
			continue
		}
		if e.values.Get(p, b.Name) == nil {
			return fmt.Errorf("%w: a record extends PCR %d, for which there is no expected value in bank %s", ErrUncovered, p, b.Name)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: a record extends PCR %d, which no compared bank holds", ErrUncovered, p)
	}
	return nil
}

// target is the expected values of the given PCRs, in the banks where they are compared.
func (e *expectation) target(pcrs []bool) serialize.PCRValues {
	out := serialize.PCRValues{}
	for p, on := range pcrs {
		if !on {
			continue
		}
		for _, b := range e.banks {
			if d := e.values.Get(uint32(p), b.Name); d != nil && (e.alloc == nil || e.alloc[b.Name][p]) {
				out.Set(uint32(p), b.Name, d)
			}
		}
	}
	return out
}

// newReplayer is a replayer over the compared banks, from start.
func (e *expectation) newReplayer(scheme serialize.Scheme, start serialize.PCRValues) (*serialize.Replayer, error) {
	return serialize.NewReplayer(serialize.ReplayOptions{Banks: e.banks, Scheme: scheme, Order: storeOrder, Start: start, DigestBank: &serialize.SHA1})
}

// prover proves records against an expectation: the log is the shortest prefix after which
// every PCR any record so far extended equals its expected value in every compared bank.
type prover struct {
	r       *serialize.Replayer
	e       *expectation
	touched [serialize.MaxPCR]bool
	any     bool
}

// newProver continues r, whose records so far extended the PCRs in touched.
func newProver(r *serialize.Replayer, e *expectation, touched map[uint32]bool) (*prover, error) {
	p := &prover{r: r, e: e}
	for pcr := range touched {
		if err := p.touch(pcr); err != nil {
			return nil, err
		}
	}
	return p, p.arm()
}

func (p *prover) touch(pcr uint32) error {
	if pcr >= serialize.MaxPCR {
		return fmt.Errorf("%w: PCR %d out of range", ErrUncovered, pcr)
	}
	if p.touched[pcr] {
		return nil
	}
	if err := p.e.cover(pcr); err != nil {
		return err
	}
	p.touched[pcr], p.any = true, true
	return nil
}

func (p *prover) arm() error { return p.r.SetTarget(p.e.target(p.touched[:])) }

// add replays one record that must be part of the log (no prefix is taken before it).
func (p *prover) add(rec *serialize.Record) error {
	if rec.PCR >= serialize.MaxPCR || !p.touched[rec.PCR] {
		if err := p.touch(rec.PCR); err != nil {
			return err
		}
		if err := p.arm(); err != nil {
			return err
		}
	}
	return p.r.Add(rec)
}

// proven returns the replay as verified if it matches now.
func (p *prover) proven() (*serialize.Verified, bool) {
	if !p.any || !p.r.Matches() {
		return nil, false
	}
	v, err := p.r.AddUntil(serialize.NewSliceSource(nil), p.e.target(p.touched[:]))
	if err != nil {
		return nil, false
	}
	p.arm() // AddUntil disarms
	return v, true
}

// until adds records from src up to the first prefix that matches (the state as it is
// counts as a prefix). Records after it are left in src. When none matches, the error is
// a *serialize.ReplayError of the whole log, or ErrUncovered.
func (p *prover) until(src serialize.Source) (*serialize.Verified, error) {
	if v, ok := p.proven(); ok {
		return v, nil
	}
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := p.add(rec); err != nil {
			return nil, err
		}
		if p.r.Matches() {
			if v, ok := p.proven(); ok {
				return v, nil
			}
		}
	}
	if !p.any {
		return nil, fmt.Errorf("%w: there is no record to prove", ErrUncovered)
	}
	_, err := p.r.AddUntil(serialize.NewSliceSource(nil), p.e.target(p.touched[:]))
	if err == nil {
		err = fmt.Errorf("%w: the replay matched no prefix", serialize.ErrMismatch)
	}
	return nil, err
}

// rest adds every remaining record of src, counting them.
func (p *prover) rest(src serialize.Source) (int, error) {
	n := 0
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if err := p.add(rec); err != nil {
			return n, err
		}
		n++
	}
}

// ErrNotChainStart: a store without a chain would start one with the running kernel's list,
// but that list, replayed from zero, is not the log of this TPM power cycle.
var ErrNotChainStart = errors.New("the running kernel's list is not the whole log of this TPM power cycle")

// startsPowerCycle proves, before a drain starts a new chain (an empty store, or one left
// with its header only), that the running kernel's list replayed from zero is the log of
// this TPM power cycle: some prefix of it equals the TPM's PCRs, read before the list, in
// every compared bank. After a kexec into a kernel that carried nothing (or a prefix), the
// TPM holds the earlier kernels' records too, and a chain started here could never verify;
// on 7.2 the drain would also delete from the kernel records that the store holding the
// earlier ones needs. The drain refuses instead (one store per host).
func startsPowerCycle(ctx context.Context, k *Kernel, t transport.TPM, scheme serialize.Scheme) error {
	e, err := tpmExpectation(t, []uint32{10})
	if err != nil {
		return err
	}
	if err := e.empty(); err != nil {
		return err
	}
	r, err := e.newReplayer(scheme, nil)
	if err != nil {
		return err
	}
	pr, err := newProver(r, e, nil)
	if err != nil {
		return err
	}
	src := &liveSource{ctx: ctx, k: k}
	defer src.Close()
	if _, err := pr.until(src); err != nil {
		if !isReplayFailure(err) && !errors.Is(err, ErrUncovered) {
			return err
		}
		return fmt.Errorf("%w: it does not replay from zero to the TPM's PCRs (%v): the power cycle began before this kernel (a kexec), and its earlier records are in another store or were lost; drain starts no chain that cannot verify (run imakexec rejoin with the store that holds them: --store)", ErrNotChainStart, err)
	}
	return nil
}
