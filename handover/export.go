package handover

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/imakexec/imakexec/serialize"
)

// ErrNotJoined: the running kernel's list has not been joined to the store yet.
var ErrNotJoined = errors.New("this boot has not been joined to the store: run imakexec rejoin")

// ChainOptions configures OpenChain.
type ChainOptions struct {
	Paths    Paths
	StoreDir string
	// StoreOnly leaves out the running kernel's records that are not stored yet.
	StoreOnly bool
}

// Chain is the measurement chain of one TPM power cycle in the kernel's order: every
// record of the store, then the records the running kernel holds that are not stored yet.
// It is a serialize.Source; records are valid until the next call. A Chain is unverified:
// replay it (serialize.Replayer) against the TPM's PCRs, or use Verify.
//
// The chain holds the store's shared lock from OpenChain to Close, so no drain runs while
// it is read: the records it yields have no gap and no record twice. The store and the
// kernel's list are both streamed (the list file after the staged one, as the kernel
// orders them), so memory does not grow with the chain.
type Chain struct {
	store *Store
	cr    *ChainReader
	live  *liveSource
	seq   uint64
	k     *Kernel
	skip  uint64
	opts  ChainOptions
	ctx   context.Context
}

// OpenChain opens the chain of the store and the running kernel. The running kernel must
// have been joined (rejoin) or drained into the store, unless the store is empty, when the
// chain is the kernel's list. It waits for a running drain (Store.RLock).
func OpenChain(ctx context.Context, o ChainOptions) (*Chain, error) {
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	s := &Store{dir: o.StoreDir}
	if err := s.RLock(ctx); err != nil {
		return nil, err
	}
	c := &Chain{store: s, cr: s.Reader(), opts: o, ctx: ctx}
	if o.StoreOnly {
		return c, nil
	}
	fail := func(err error) (*Chain, error) { c.Close(); return nil, err }
	var err error
	if c.k, err = ProbeKernel(o.Paths); err != nil {
		return fail(err)
	}
	ki, err := ReadKernelInfo(o.Paths)
	if err != nil {
		return fail(err)
	}
	var ok bool
	if c.skip, ok = s.joined(ki.BootID); !ok {
		return fail(fmt.Errorf("%w (boot id %s)", ErrNotJoined, ki.BootID))
	}
	return c, nil
}

// Banks are the banks the store replays (SHA1 and SHA256 for an empty store).
func (c *Chain) Banks() ([]serialize.Bank, error) { return storeBanks(c.store, nil, nil) }

// Store returns the store behind the chain.
func (c *Chain) Store() *Store { return c.store }

// Seq is the sequence number of the record last returned (from 0).
func (c *Chain) Seq() uint64 { return c.seq - 1 }

// Next returns the next record, or io.EOF.
func (c *Chain) Next() (*serialize.Record, error) {
	if c.seq&1023 == 0 {
		if err := c.ctx.Err(); err != nil {
			return nil, err
		}
	}
	if c.live == nil {
		rec, err := c.cr.Next()
		if err == nil {
			c.seq++
			return rec, nil
		}
		if !errors.Is(err, io.EOF) {
			return nil, err
		}
		if c.k == nil {
			return nil, io.EOF
		}
		c.live = &liveSource{ctx: c.ctx, k: c.k, skip: c.skip, gapIsError: true}
	}
	rec, err := c.live.Next()
	if err != nil {
		return nil, err
	}
	c.seq++
	return rec, nil
}

// Close releases open files and the store's lock.
func (c *Chain) Close() error {
	err := c.cr.Close()
	c.live.Close()
	c.store.Unlock()
	return err
}

// ExportOptions configures Export.
type ExportOptions struct {
	ChainOptions
	// From skips the first From records; State is then the replayed PCR values after them,
	// the state a verifier resumes from (incremental attestation).
	From uint64
}

// ExportResult says what Export wrote.
type ExportResult struct {
	Records uint64 // records written
	From    uint64
	// State is the replayed PCR values after the skipped records (in the store's banks).
	State serialize.PCRValues
	Banks []serialize.Bank
}

// Export writes the chain (from record From) with write, e.g. a serialize.BinaryWriter's
// Write, so existing verifiers read it in the kernel's own formats.
func Export(ctx context.Context, o ExportOptions, write func(*serialize.Record) error) (*ExportResult, error) {
	c, err := OpenChain(ctx, o.ChainOptions)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	banks, err := c.Banks()
	if err != nil {
		return nil, err
	}
	res := &ExportResult{From: o.From, Banks: banks}
	r, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Order: storeOrder})
	if err != nil {
		return nil, err
	}
	for {
		rec, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return res, err
		}
		if c.Seq() < o.From {
			if err := r.Add(rec); err != nil {
				return res, err
			}
			continue
		}
		if err := write(rec); err != nil {
			return res, err
		}
		res.Records++
	}
	if c.seq < o.From {
		return res, fmt.Errorf("--from %d is past the end of the chain (%d records)", o.From, c.seq)
	}
	res.State = r.State()
	return res, nil
}
