package handover

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/serialize"
)

// RejoinOptions configures Rejoin.
type RejoinOptions struct {
	Paths    Paths
	StoreDir string
	TPM      transport.TPM
	// Window describes the kexec window (from the old kernel's handoff); nil when there is
	// none, and then only records some list holds can join.
	Window *WindowInputs
	// Backend for the drain that follows the join (default auto).
	Backend Backend
	// Banks replayed when the store is created (DrainOptions.Banks).
	Banks []serialize.Bank
}

// RejoinResult says how the running kernel's list was joined to the chain.
type RejoinResult struct {
	BootID     string
	Generation int
	// Archived is set when the store belonged to another TPM power cycle (a cold boot):
	// it was archived and a new chain started.
	Archived      string
	AlreadyJoined bool   // this boot was joined (or drained) before
	NewChain      bool   // the store was empty: the live list starts the chain
	Join          *Join  // what was joined (nil for a new chain or an earlier join)
	Description   string // human-readable join
	Drain         *DrainResult
	// Verify is the proof of the whole chain; when it does not verify, Rejoin returns a
	// *NotVerifiedError carrying the partial result instead.
	Verify *Verified
	proof  *Verified // the join's own proof, made under the store lock
}

// Rejoin joins the running kernel's list to the store's chain, once per boot, early: it
// forms the candidate joins (the old kernel carried its held records or not, window
// records carried or reconstructed from the handoff), keeps the one that replays to the
// TPM's PCRs in every bank, records it, drains the new kernel's list into the store and
// verifies the whole chain. A join that no candidate proves is a *JoinError and nothing
// is written.
func Rejoin(ctx context.Context, o RejoinOptions) (*RejoinResult, error) {
	if o.TPM == nil {
		return nil, fmt.Errorf("%w: rejoin proves the join against the TPM", ErrNoTPM)
	}
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	ki, err := ReadKernelInfo(o.Paths)
	if err != nil {
		return nil, err
	}
	k, err := ProbeKernel(o.Paths)
	if err != nil {
		return nil, err
	}
	res := &RejoinResult{BootID: ki.BootID}
	if err := rejoinLocked(ctx, o, ki, k, res); err != nil {
		return res, err
	}
	// Store the new kernel's own records (and finish anything a crash left).
	dr, err := Drain(ctx, DrainOptions{Paths: o.Paths, StoreDir: o.StoreDir, Backend: o.Backend, TPM: o.TPM, Banks: o.Banks})
	if err != nil {
		return res, fmt.Errorf("drain after the join: %w", err)
	}
	res.Drain = dr
	res.Generation = dr.Generation
	if dr.Archived != "" && res.Archived == "" {
		res.Archived = dr.Archived
	}
	v := res.proof
	if v == nil {
		// A new chain or an earlier join: prove the whole chain now.
		if v, err = Verify(ctx, VerifyOptions{Paths: o.Paths, StoreDir: o.StoreDir, TPM: o.TPM, Window: o.Window}); err != nil {
			return res, err
		}
	}
	res.Verify = v
	return res, nil
}

func rejoinLocked(ctx context.Context, o RejoinOptions, ki KernelInfo, k *Kernel, res *RejoinResult) error {
	s := &Store{dir: o.StoreDir}
	if err := s.Lock(ctx); err != nil {
		return err
	}
	defer s.Unlock()
	reset, restart, err := ReadClock(o.TPM)
	if err != nil {
		return err
	}
	clock := TPMBinding{ResetCount: reset, RestartCount: restart}
	if res.Archived, err = s.archiveIfOtherCycle(reset); err != nil {
		return err
	}
	if len(s.Segments()) == 0 {
		// An empty store, or one holding only its header (a first drain that failed after
		// creating it, e.g. with EBUSY): the running kernel's list starts the chain.
		res.NewChain = true
		res.Description = "new chain: the store was empty, the running kernel's list starts it"
		return nil
	}
	if s.knowsBoot(ki.BootID) {
		res.AlreadyJoined = true
		if bs := s.Boot(ki.BootID); bs != nil {
			res.Generation = bs.Generation
		} else {
			res.Generation = s.joinOf(ki.BootID).Generation
		}
		res.Description = "this boot was joined before"
		return nil
	}
	e, err := tpmExpectation(o.TPM, imaPCRs(s))
	if err != nil {
		return err
	}
	fail := func(err error) error {
		return &NotVerifiedError{Result: &VerifyResult{Banks: e.banks, Expected: e.values, NotCompared: e.notCompared}, Err: err}
	}
	if err := e.empty(); err != nil {
		return fail(err)
	}
	obs := &observer{tpm: e.values}
	r, err := walkChain(s, e.banks, obs)
	if err != nil {
		return err
	}
	if obs.bootAggErr != nil {
		return fail(obs.bootAggErr)
	}
	scheme := ki.Scheme()
	live, _, err := readLive(ctx, k, 0)
	if err != nil {
		return err
	}
	chainState := r.State()
	plan, err := planJoin(s, live, chainState, obs.pcrs, e, scheme, o.Window)
	if err != nil {
		if errors.Is(err, ErrUncovered) {
			return fail(err)
		}
		return err
	}
	// The join was proven by replaying the whole chain, the window records and the live
	// list against the TPM: that is the verification; check its boot_aggregates too.
	joined := append(append(append([]serialize.Record{}, plan.windowCarried...), plan.reconstructed.recs...), live[plan.carried:]...)
	for i := range joined[:len(joined)-plan.extra] {
		obs.see(plan.chainLen+uint64(i), &joined[i])
	}
	if obs.bootAggErr != nil {
		return fail(obs.bootAggErr)
	}
	// The join's replayer started from the chain's state: it counts the joined records only.
	res.proof = &Verified{VerifyResult{Records: plan.chainLen + uint64(plan.verified.Records), Stored: plan.chainLen,
		Live: plan.verified.Records, Extra: plan.extra, PCRs: plan.verified.PCRs, Expected: e.values,
		Banks: e.banks, Boundaries: obs.boundaries, Warnings: obs.gaps(), NotCompared: e.notCompared}}
	gen := plan.prev.Generation + 1
	j := &Join{
		BootID: ki.BootID, Generation: gen, PrevBootID: plan.prev.BootID,
		KernelCarried: plan.carried, Duplicated: plan.dup, Reconstructed: uint64(len(plan.reconstructed.recs)),
		BootAggregateSeq: plan.bootAggSeq, Candidate: plan.describe(), Candidates: plan.candidates,
		PCRs: pcrsJSON(e.target(touchedOf(obs.pcrs))),
	}
	res.Join, res.Description, res.Generation = j, j.Candidate, gen

	newBoot := BootInfo{BootID: ki.BootID, Generation: gen, KernelRelease: ki.Release}
	meta := Segment{Backend: BackendRejoin, IMAHash: ki.IMAHash(), KernelBanks: k.Banks, Scheme: schemeOf(scheme),
		ByteOrder: "little", FlushHtable: ki.FlushHtable(), TPM: clock}
	chainEnd := s.Records()
	newState := ""
	if plan.dup > 0 {
		sg := meta
		sg.Source, sg.Boot, sg.FirstSeq = SourceDuplicate, newBoot, chainEnd
		ref := plan.dupRef
		sg.Duplicates = &ref
		out, err := s.writeSegment(sg, live[:plan.dup], "", nil, chainState)
		if err != nil {
			return err
		}
		newState = out.BootHash
	}
	if len(plan.windowCarried) > 0 {
		sg := meta
		sg.Source, sg.Boot, sg.FirstSeq = SourceCarried, newBoot, chainEnd
		sg.Boot.FirstIndex = plan.dup
		out, err := s.writeSegment(sg, plan.windowCarried, newState, r, nil)
		if err != nil {
			return err
		}
		chainEnd = out.End()
	}
	if len(plan.reconstructed.recs) > 0 {
		// Rebuilt records belong to the old kernel, after what it stored.
		old := lastSegmentOf(s, plan.prev.BootID)
		sg := meta
		if old != nil {
			sg.IMAHash, sg.KernelBanks, sg.Scheme, sg.FlushHtable = old.IMAHash, old.KernelBanks, old.Scheme, old.FlushHtable
		}
		sg.Source, sg.FirstSeq = SourceReconstructed, chainEnd
		sg.Boot = BootInfo{BootID: plan.prev.BootID, Generation: plan.prev.Generation, KernelRelease: plan.prev.KernelRelease, FirstIndex: plan.prev.Stored}
		sg.Reconstructed = plan.reconstructed.desc
		start := ""
		if old != nil {
			start = old.BootHash
		}
		if _, err := s.writeSegment(sg, plan.reconstructed.recs, start, r, nil); err != nil {
			return err
		}
	}
	return s.appendEntries([]Entry{{Type: EntryJoin, Join: j}}, nil)
}

// lastSegmentOf is the boot's segment that ends last in its list.
func lastSegmentOf(s *Store, bootID string) *Segment {
	var out *Segment
	for _, sg := range s.Segments() {
		if sg.Boot.BootID == bootID && (out == nil || sg.Boot.FirstIndex+sg.Count >= out.Boot.FirstIndex+out.Count) {
			c := sg
			out = &c
		}
	}
	return out
}

// onlyBanks keeps the values of v in the given banks.
func onlyBanks(v serialize.PCRValues, banks []serialize.Bank) serialize.PCRValues {
	out := serialize.PCRValues{}
	for p, m := range v {
		for _, b := range banks {
			if d, ok := m[b.Name]; ok {
				out.Set(p, b.Name, d)
			}
		}
	}
	return out
}
