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
// The store is streamed, so memory does not grow with the chain; the running kernel's
// unstored records are read when the store's end is reached.
type Chain struct {
	store  *Store
	cr     *ChainReader
	tail   []serialize.Record
	ti     int
	seq    uint64
	k      *Kernel
	skip   uint64
	opts   ChainOptions
	ctx    context.Context
	inTail bool
}

// OpenChain opens the chain of the store and the running kernel. The running kernel must
// have been joined (rejoin) or drained into the store, unless the store is empty, when the
// chain is the kernel's list.
func OpenChain(ctx context.Context, o ChainOptions) (*Chain, error) {
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	s, err := OpenStore(o.StoreDir)
	if err != nil {
		return nil, err
	}
	c := &Chain{store: s, cr: s.Reader(), opts: o, ctx: ctx}
	if o.StoreOnly {
		return c, nil
	}
	if c.k, err = ProbeKernel(o.Paths); err != nil {
		return nil, err
	}
	ki, err := ReadKernelInfo(o.Paths)
	if err != nil {
		return nil, err
	}
	if bs := s.Boot(ki.BootID); bs != nil {
		c.skip = bs.Retained
	} else if s.Exists() {
		return nil, ErrNotJoined
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
	if !c.inTail {
		rec, err := c.cr.Next()
		if err == nil {
			c.seq++
			return rec, nil
		}
		if !errors.Is(err, io.EOF) {
			return nil, err
		}
		c.inTail = true
		if c.k != nil {
			live, held, err := readLive(c.ctx, c.k, c.skip)
			if err != nil {
				return nil, err
			}
			if held < c.skip {
				return nil, fmt.Errorf("%w: the kernel holds %d records, fewer than the %d stored ones it held at the last drain", ErrGap, held, c.skip)
			}
			c.tail = live
		}
	}
	if c.ti >= len(c.tail) {
		return nil, io.EOF
	}
	c.ti++
	c.seq++
	return &c.tail[c.ti-1], nil
}

// Close releases open files.
func (c *Chain) Close() error { return c.cr.Close() }

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
