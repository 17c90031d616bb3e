package handover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/serialize"
)

// ErrNotVerified marks a chain that does not replay to the TPM (or was tampered with).
var ErrNotVerified = errors.New("measurement chain does not verify")

// VerifyOptions configures Verify.
type VerifyOptions struct {
	Paths    Paths
	StoreDir string
	// TPM supplies the PCR values and the power-cycle binding; PCRs may replace the values
	// (e.g. read from a file), in which case TPM may be nil.
	TPM  transport.TPM
	PCRs serialize.PCRValues
	// Window describes the kexec window for a boot that rejoin has not joined yet.
	Window *WindowInputs
}

// VerifyResult is the outcome of Verify. Verified is true only when the whole chain (the
// store, then the running kernel's list) replays to the expected PCRs in every bank and
// every boot_aggregate matches PCRs 0-9.
type VerifyResult struct {
	Verified   bool
	Records    uint64 // records proven: the store's chain plus the live prefix
	Stored     uint64 // of those, in the store
	Live       int    // of those, from the running kernel's list
	Extra      int    // live records after the matching prefix (measured after the PCR read)
	PCRs       serialize.PCRValues
	Expected   serialize.PCRValues
	Banks      []serialize.Bank
	Boundaries []Boundary
	Warnings   []string
	// Join describes the join made in memory when rejoin had not joined this boot yet.
	Join string
	// Err says why the chain does not verify (a *serialize.ReplayError, *TamperError,
	// *JoinError, *serialize.BootAggregateError, or ErrBindingMismatch).
	Err error
}

// Verify replays the store and the running kernel's list against the TPM (or the given PCR
// values) in every bank the store replays. A chain that does not verify is reported in the
// result, not as an error; the error is for what kept the check from running.
func Verify(ctx context.Context, o VerifyOptions) (*VerifyResult, error) {
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	s, err := OpenStore(o.StoreDir)
	if err != nil {
		var te *TamperError
		if errors.As(err, &te) {
			return &VerifyResult{Err: err}, nil
		}
		return nil, err
	}
	if s.Exists() {
		// Serialise with drains so the store and the kernel's list are read consistently.
		if err := s.Lock(ctx); err != nil {
			return nil, err
		}
		defer s.Unlock()
	}
	k, err := ProbeKernel(o.Paths)
	if err != nil {
		return nil, err
	}
	ki, err := ReadKernelInfo(o.Paths)
	if err != nil {
		return nil, err
	}
	res := &VerifyResult{}
	if h := s.Header(); h != nil && o.TPM != nil {
		reset, _, err := ReadClock(o.TPM)
		if err != nil {
			return nil, err
		}
		if reset != h.TPM.ResetCount {
			res.Err = fmt.Errorf("%w: the store was made in TPM power cycle %d, the TPM is in %d (a cold boot happened); the next drain or rejoin archives it", ErrBindingMismatch, h.TPM.ResetCount, reset)
			return res, nil
		}
	}
	if res.Banks, err = storeBanks(s, o.TPM, k); err != nil {
		return nil, err
	}
	expected := o.PCRs
	if expected == nil {
		if o.TPM == nil {
			return nil, fmt.Errorf("%w: verify needs a TPM or PCR values", ErrNoTPM)
		}
		if expected, err = readExpected(o.TPM, res.Banks, imaPCRs(s)); err != nil {
			return nil, err
		}
	}
	res.Expected = expected
	// The PCRs are read before the list: records measured in between make the list run
	// ahead of them, never behind (spec §6.4).
	obs := &observer{tpm: expected}
	r, err := walkChain(s, res.Banks, obs)
	if err != nil {
		var te *TamperError
		if errors.As(err, &te) {
			res.Err = err
			return res, nil
		}
		return nil, err
	}
	res.Stored = s.Records()
	scheme, _ := serialize.ParseScheme(ki.Scheme())
	r.SetScheme(scheme)
	obs.scheme = scheme

	var tail []serialize.Record
	if bs := s.Boot(ki.BootID); bs != nil {
		// Joined already: the kernel's first Retained held records are stored ones.
		var held uint64
		if tail, held, err = readLive(ctx, k, bs.Retained); err != nil {
			return nil, err
		}
		if held < bs.Retained {
			res.Err = fmt.Errorf("%w: the kernel holds %d records, fewer than the %d stored ones it held at the last drain: records were deleted by something other than imakexec", ErrGap, held, bs.Retained)
			return res, nil
		}
	} else {
		live, _, err := readLive(ctx, k, 0)
		if err != nil {
			return nil, err
		}
		tail = live
		if s.Exists() {
			plan, err := planJoin(s, live, r.State(), obs.pcrs, expected, res.Banks, scheme, o.Window)
			if err != nil {
				var je *JoinError
				if errors.As(err, &je) {
					res.Err = err
					return res, nil
				}
				return nil, err
			}
			res.Join = plan.describe() + " (not yet stored: run imakexec rejoin)"
			tail = append(append(append([]serialize.Record{}, plan.windowCarried...), plan.reconstructed.recs...), live[plan.carried:]...)
			res.Warnings = append(res.Warnings, "this boot has not been joined to the store yet; the join was proven in memory only")
		}
	}
	pcrs := touched(tail)
	for p := range obs.pcrs {
		pcrs[p] = true
	}
	want := restrict(expected, pcrs, res.Banks)
	ob := &observed{src: &sliceSource{recs: tail}, obs: obs, seq: res.Stored}
	v, err := r.AddUntil(ob, want)
	if err != nil {
		res.Err = err
		res.PCRs = restrict(r.State(), pcrs, res.Banks)
		return res, nil
	}
	res.Live = v.Records - int(res.Stored)
	res.Extra = len(tail) - res.Live
	res.Records = uint64(v.Records)
	res.PCRs = restrict(v.PCRs, pcrs, res.Banks)
	if res.Extra > 0 && o.TPM != nil && o.PCRs == nil {
		// Records after the proven prefix were measured after the PCR read, or are not
		// genuine (a record counted twice would also sit there). Read the PCRs again: if
		// the whole list replays to them now, it is proven too.
		if err := r.AddAll(ob); err != nil {
			return nil, err
		}
		again, err := readExpected(o.TPM, res.Banks, imaPCRs(s))
		if err != nil {
			return nil, err
		}
		if _, err := r.Result().Verify(restrict(again, pcrs, res.Banks)); err == nil {
			res.Live += res.Extra
			res.Records += uint64(res.Extra)
			res.Extra = 0
			res.PCRs = restrict(r.State(), pcrs, res.Banks)
		} else {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%d records after the proven prefix are not proven: measured after the PCR read (verify again), or not extended into the TPM", res.Extra))
		}
	}
	res.Boundaries = obs.boundaries
	res.Warnings = append(res.Warnings, obs.gaps()...)
	if obs.bootAggErr != nil {
		res.Err = obs.bootAggErr
		return res, nil
	}
	res.Verified = true
	return res, nil
}

// storeBanks are the banks the store replays, or for a new store the banks a drain would
// pick.
func storeBanks(s *Store, t transport.TPM, k *Kernel) ([]serialize.Bank, error) {
	if h := s.Header(); h != nil {
		var out []serialize.Bank
		for _, n := range h.Banks {
			b, err := serialize.ParseBank(n)
			if err != nil {
				return nil, &TamperError{File: manifestName, Line: 1, What: err.Error()}
			}
			out = append(out, b)
		}
		return out, nil
	}
	if t == nil {
		return []serialize.Bank{serialize.SHA1, serialize.SHA256}, nil
	}
	return defaultBanks(t, k)
}

// imaPCRs are the PCRs IMA extends: those the store's chain touched, and the default
// CONFIG_IMA_MEASURE_PCR_IDX.
func imaPCRs(s *Store) []uint32 {
	set := map[uint32]bool{10: true}
	if segs := s.ChainSegments(); len(segs) > 0 {
		if v, err := decodePCRs(segs[len(segs)-1].PCRs); err == nil {
			for p := range v {
				set[p] = true
			}
		}
	}
	var out []uint32
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// readExpected reads PCRs 0-9 (for the boot_aggregates; they do not change while the
// kernel runs) and then the IMA PCRs in as few TPM2_PCR_Read commands as the TPM allows
// (8 digests each): one command for PCR 10 in up to eight banks. IMA extends every bank
// of a record under one lock, so a single read of them is a consistent point of the
// log; values spread over several commands could straddle a record (spec §6.4).
func readExpected(t transport.TPM, banks []serialize.Bank, ima []uint32) (serialize.PCRValues, error) {
	var base []uint32
	for p := uint32(0); p < 10; p++ {
		if !slices.Contains(ima, p) {
			base = append(base, p)
		}
	}
	// A boot_aggregate is in the bank of ima_hash when the TPM has it
	// (ima_calc_boot_aggregate), which need not be a replayed bank (a 6.1 kernel with
	// ima_hash=sha512 and a store replaying sha1+sha256): PCRs 0-9 are read in every
	// active bank the kernel can hash.
	baseBanks := slices.Clone(banks)
	if tb, err := ActiveBanks(t); err == nil {
		for _, b := range tb {
			if b.KernelHash() && !slices.ContainsFunc(baseBanks, func(x serialize.Bank) bool { return x.Name == b.Name }) {
				baseBanks = append(baseBanks, b)
			}
		}
	}
	out, err := ReadPCRs(t, baseBanks, base)
	if err != nil {
		return nil, err
	}
	v, err := ReadPCRs(t, banks, ima)
	if err != nil {
		return nil, err
	}
	for p, m := range v {
		for b, d := range m {
			out.Set(p, b, d)
		}
	}
	return out, nil
}

func allPCRs() []uint32 {
	out := make([]uint32, serialize.MaxPCR)
	for i := range out {
		out[i] = uint32(i)
	}
	return out
}
