package handover

import (
	"context"
	"errors"
	"fmt"
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

// VerifyResult is what a verify found: the whole result when the chain verifies (inside a
// *Verified), the partial one when it does not (inside a *NotVerifiedError).
type VerifyResult struct {
	Records    uint64 // records proven: the store's chain plus the live prefix
	Stored     uint64 // of those, in the store
	Live       int    // of those, from the running kernel's list
	Extra      int    // live records after the matching prefix (measured after the PCR read)
	PCRs       serialize.PCRValues
	Expected   serialize.PCRValues
	Banks      []serialize.Bank // the banks compared: the TPM's (or the given values')
	Boundaries []Boundary
	Warnings   []string
	// NotCompared names every TPM bank (or PCR of a bank) the verdict does not compare, and
	// why (an algorithm imakexec cannot compute, a PCR the TPM has not allocated there).
	NotCompared []string
	// Join describes the join made in memory when rejoin had not joined this boot yet.
	Join string
}

// Verified is the proof that a chain replays to the TPM: the store, then the running
// kernel's list, in every compared bank and every PCR a record extends, with every
// boot_aggregate matching PCRs 0-9. Only Verify and Rejoin make one.
type Verified struct {
	VerifyResult
}

// NotVerifiedError says why a chain does not verify, with what was found up to there. It
// matches ErrNotVerified and its cause (a *serialize.ReplayError, *TamperError, *JoinError,
// *serialize.BootAggregateError, ErrBindingMismatch, ErrGap or ErrUncovered).
type NotVerifiedError struct {
	Result *VerifyResult
	Err    error
}

func (e *NotVerifiedError) Error() string { return ErrNotVerified.Error() + ": " + e.Err.Error() }

func (e *NotVerifiedError) Unwrap() []error { return []error{ErrNotVerified, e.Err} }

// Verify replays the store and the running kernel's list against the TPM (or the given PCR
// values) in every bank the TPM has allocated, and every PCR any record extends. It returns
// the proof, or a *NotVerifiedError when the chain does not verify; any other error is
// about what kept the check from running.
func Verify(ctx context.Context, o VerifyOptions) (*Verified, error) {
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	res := &VerifyResult{}
	fail := func(err error) (*Verified, error) { return nil, &NotVerifiedError{Result: res, Err: err} }
	s, err := OpenStore(o.StoreDir)
	if err != nil {
		var te *TamperError
		if errors.As(err, &te) {
			return fail(err)
		}
		return nil, err
	}
	if s.Exists() {
		// Serialise with drains so the store and the kernel's list are read consistently.
		if err := s.RLock(ctx); err != nil {
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
	if h := s.Header(); h != nil && o.TPM != nil {
		reset, _, err := ReadClock(o.TPM)
		if err != nil {
			return nil, err
		}
		if reset != h.TPM.ResetCount {
			return fail(fmt.Errorf("%w: the store was made in TPM power cycle %d, the TPM is in %d (a cold boot happened); the next drain or rejoin archives it", ErrBindingMismatch, h.TPM.ResetCount, reset))
		}
	}
	// The PCRs are read before the list: records measured in between make the list run
	// ahead of them, never behind (IMA extends the TPM in list order under ima_extend_list_mutex).
	e, err := newExpectation(o.TPM, o.PCRs, s)
	if err != nil {
		return nil, err
	}
	res.Banks, res.Expected = e.banks, e.values
	defer func() { res.NotCompared = e.notCompared }()
	if err := e.empty(); err != nil {
		return fail(err)
	}
	obs := &observer{tpm: e.values}
	r, err := walkChain(s, e.banks, obs)
	if err != nil {
		var te *TamperError
		if errors.As(err, &te) {
			return fail(err)
		}
		return nil, err
	}
	res.Stored = s.Records()
	scheme := ki.Scheme()
	r.SetScheme(scheme)
	obs.scheme = scheme
	pr, err := newProver(r, e, obs.pcrs)
	if err != nil {
		return fail(err)
	}

	var (
		tail serialize.Source
		live *liveSource
	)
	if skip, joined := s.joined(ki.BootID); joined || !s.Exists() {
		// Joined already (the kernel's first Retained held records are stored ones), or a
		// new chain: the live list is streamed.
		live = &liveSource{ctx: ctx, k: k, skip: skip}
		defer live.Close()
		tail = live
	} else {
		recs, _, err := readLive(ctx, k, 0)
		if err != nil {
			return nil, err
		}
		plan, err := planJoin(s, recs, r.State(), obs.pcrs, e, scheme, o.Window)
		if err != nil {
			var je *JoinError
			if errors.As(err, &je) || errors.Is(err, ErrUncovered) {
				return fail(err)
			}
			return nil, err
		}
		res.Join = plan.describe() + " (not yet stored: run imakexec rejoin)"
		tail = serialize.NewSliceSource(append(append(append([]serialize.Record{}, plan.windowCarried...), plan.reconstructed.recs...), recs[plan.carried:]...))
		res.Warnings = append(res.Warnings, "this boot has not been joined to the store yet; the join was proven in memory only")
	}
	ob := &observed{src: tail, obs: obs, seq: res.Stored}
	v, err := pr.until(ob)
	if lerr := live.gap(); lerr != nil {
		return fail(lerr)
	}
	if err != nil {
		if errors.Is(err, ErrUncovered) || isReplayFailure(err) {
			res.PCRs = r.State()
			return fail(err)
		}
		return nil, err
	}
	res.Live = v.Records - int(res.Stored)
	res.Records = uint64(v.Records)
	res.PCRs = v.PCRs
	// Records after the proven prefix were measured after the PCR read, or are not genuine
	// (a record counted twice would also sit there).
	if res.Extra, err = pr.rest(ob); err != nil {
		if errors.Is(err, ErrUncovered) || isReplayFailure(err) {
			return fail(err)
		}
		return nil, err
	}
	if lerr := live.gap(); lerr != nil {
		return fail(lerr)
	}
	if res.Extra > 0 && e.tpm != nil {
		// Read the PCRs again: if the whole list replays to them now, it is proven too.
		if err := e.read(); err != nil {
			return nil, err
		}
		if err := pr.arm(); err != nil {
			return nil, err
		}
		if v, ok := pr.proven(); ok {
			res.Live += res.Extra
			res.Records += uint64(res.Extra)
			res.Extra = 0
			res.PCRs = v.PCRs
		} else {
			res.Warnings = append(res.Warnings, fmt.Sprintf("%d records after the proven prefix are not proven: measured after the PCR read (verify again), or not extended into the TPM", res.Extra))
		}
	}
	res.Boundaries = obs.boundaries
	res.Warnings = append(res.Warnings, obs.gaps()...)
	if obs.bootAggErr != nil {
		return fail(obs.bootAggErr)
	}
	res.NotCompared = e.notCompared
	return &Verified{VerifyResult: *res}, nil
}

// newExpectation builds what a verdict compares: the given values, else the TPM's. The
// store only hints which PCRs IMA extends, so they are read together.
func newExpectation(t transport.TPM, given serialize.PCRValues, s *Store) (*expectation, error) {
	if given != nil {
		return valuesExpectation(given)
	}
	if t == nil {
		return nil, fmt.Errorf("%w: verify needs a TPM or PCR values", ErrNoTPM)
	}
	return tpmExpectation(t, imaPCRs(s))
}

// isReplayFailure reports a replay that ran but does not match or does not parse as a
// chain (as opposed to an I/O error).
func isReplayFailure(err error) bool {
	var re *serialize.ReplayError
	var te *TamperError
	return errors.As(err, &re) || errors.As(err, &te) || errors.Is(err, serialize.ErrMismatch) || errors.Is(err, serialize.ErrDigestMismatch)
}

// storeBanks are the banks the store's header lists (a hint), or for an empty store SHA1
// and SHA256.
func storeBanks(s *Store, _ transport.TPM, _ *Kernel) ([]serialize.Bank, error) {
	if h := s.Header(); h != nil {
		return headerBanks(h)
	}
	return []serialize.Bank{serialize.SHA1, serialize.SHA256}, nil
}

// imaPCRs are the PCRs IMA is expected to extend, read from the TPM in one command: the
// default CONFIG_IMA_MEASURE_PCR_IDX and those the store says its chain touched (a hint:
// every other PCR is read too, and every PCR a record extends is compared).
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

// IsNotVerified reports whether err says the log does not verify (as opposed to what kept
// a check from running): a proof that failed, a tampered or mismatching store, a gap, a
// join no candidate proves, or a new chain that is not the power cycle's whole log. The
// CLI maps these to exit 1.
func IsNotVerified(err error) bool {
	var je *JoinError
	return errors.As(err, &je) || errors.Is(err, ErrNotVerified) || errors.Is(err, ErrTampered) ||
		errors.Is(err, ErrStoreMismatch) || errors.Is(err, ErrGap) || errors.Is(err, ErrNotChainStart)
}
