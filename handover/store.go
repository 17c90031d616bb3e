package handover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/imakexec/imakexec/internal/storefs"
	"github.com/imakexec/imakexec/serialize"
)

// DefaultStoreDir is the store directory of a running system.
const DefaultStoreDir = "/var/lib/imakexec"

// storeOrder is the byte order of segment files: little-endian, as the kernel's canonical
// format (ima_canonical_fmt) and every supported host.
var storeOrder = binary.LittleEndian

// ErrLocked is returned by TryLock when another process holds the store.
var ErrLocked = errors.New("store is locked by another imakexec process")

// ErrBindingMismatch is returned when the store belongs to another TPM power cycle.
var ErrBindingMismatch = errors.New("store belongs to another TPM power cycle")

// Store is a handoff store directory: segments/NNNNNNNN.kexec in the kernel's kexec
// handover format, and manifest.jsonl, a hash-chained list of entries (see Entry). Readers
// take a shared flock on DIR/lock (RLock), writers (Drain, Rejoin, Archive) an exclusive one.
type Store struct {
	dir   string
	lockf *os.File
	// root is the store directory, opened and checked when the exclusive lock was taken:
	// every write (segments, manifest, archive, cleanup) is made relative to it with the
	// *at system calls (storefs.Dir), so nothing swapped in after the check is followed.
	root    *storefs.Dir
	rlocked bool // shared lock (lockf may be nil for a store never locked)
	// ctx is the context the lock was taken with: reading the chain (ChainReader) stops
	// when it is done, so a signal ends a long verify, export or rejoin.
	ctx      context.Context
	entries  []Entry
	lastHash string
	good     int64 // length of the complete manifest lines
	torn     bool  // a crash left an incomplete last line
}

// OpenStore reads the store in dir. A missing directory or manifest gives an empty store
// (Exists reports false); nothing is created.
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) load() error {
	s.entries, s.lastHash, s.good, s.torn = nil, "", 0, false
	if _, err := os.Lstat(s.dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// segments/ must be ours like the store (it is opened again below the store's
	// descriptor whenever a segment is read).
	if err := checkSubdir(s.dir, segmentsDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("store: %w", err)
	}
	f, err := openStoreFile(s.dir, manifestName)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if fi.Size() > MaxManifestSize {
		return fmt.Errorf("store: %w: %s is %d bytes, over the limit of %d (MaxManifestSize); nothing was read or changed", ErrManifestTooLarge, f.Name(), fi.Size(), MaxManifestSize)
	}
	st, err := parseManifest(io.LimitReader(f, fi.Size()))
	if err != nil {
		return err
	}
	s.entries, s.lastHash, s.good, s.torn = st.entries, st.lastHash, st.good, st.torn
	return nil
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

// Exists reports whether the store has a manifest.
func (s *Store) Exists() bool { return len(s.entries) > 0 }

// Header returns the manifest header, nil for an empty store.
func (s *Store) Header() *Header {
	if len(s.entries) == 0 {
		return nil
	}
	return s.entries[0].Header
}

// Entries returns the manifest entries in order (header first).
func (s *Store) Entries() []Entry { return s.entries }

// ChainSegments returns the segments whose records make up the chain, in order (all but
// duplicate segments).
func (s *Store) ChainSegments() []Segment {
	var out []Segment
	for _, e := range s.entries {
		if e.Segment != nil && e.Segment.InChain() {
			out = append(out, *e.Segment)
		}
	}
	return out
}

// Joins returns the join entries, in order.
func (s *Store) Joins() []Join {
	var out []Join
	for _, e := range s.entries {
		if e.Join != nil {
			out = append(out, *e.Join)
		}
	}
	return out
}

// Segments returns every segment in manifest order, duplicate segments included.
func (s *Store) Segments() []Segment {
	var out []Segment
	for _, e := range s.entries {
		if e.Segment != nil {
			out = append(out, *e.Segment)
		}
	}
	return out
}

// Records is the number of records in the chain.
func (s *Store) Records() uint64 {
	for i := len(s.entries) - 1; i >= 0; i-- {
		if sg := s.entries[i].Segment; sg != nil && sg.InChain() {
			return sg.End()
		}
	}
	return 0
}

// Bytes is the total size of the segment files.
func (s *Store) Bytes() int64 {
	var n int64
	for _, e := range s.entries {
		if e.Segment != nil {
			n += e.Segment.Size
		}
	}
	return n
}

// segmentCount is the number of segments, duplicates included, and last the last one
// (nil for none), without copying them (Segments does).
func (s *Store) segmentCount() (n int, last *Segment) {
	for _, e := range s.entries {
		if e.Segment != nil {
			n, last = n+1, e.Segment
		}
	}
	return n, last
}

// LastDrain is the time of the last manifest entry (zero for an empty store).
func (s *Store) LastDrain() time.Time {
	if len(s.entries) == 0 {
		return time.Time{}
	}
	return s.entries[len(s.entries)-1].Time
}

// PCRs returns the replayed PCR values after the last segment (empty for no segment).
func (s *Store) PCRs() (serialize.PCRValues, error) {
	segs := s.ChainSegments()
	if len(segs) == 0 {
		return serialize.PCRValues{}, nil
	}
	return decodePCRs(segs[len(segs)-1].PCRs)
}

// BootState is what the store knows about one kernel (boot id) of the chain.
type BootState struct {
	BootID        string
	Generation    int
	KernelRelease string
	// Stored is how many records of this kernel's list (counted since its boot) the store
	// holds: indexes [0, Stored) of that list are in the store.
	Stored uint64
	// Deleted is how many of them the kernel is known to no longer hold (deleted, or
	// carried to the next kernel after ESTALE); Carried counts the latter.
	Deleted uint64
	Carried bool
	// DeletedBy splits Deleted by the backend that deleted (or "carried").
	DeletedBy map[Backend]uint64
	// Retained = Stored - Deleted: stored records the kernel still held at the last drain,
	// at the head of its list. A verifier joining the store with the live list skips them.
	Retained uint64
	segs     []*Segment // this boot's segments, in the store's entries (not copies)
}

// Boots returns the state of every kernel in the chain, in order.
func (s *Store) Boots() []BootState {
	var out []BootState
	idx := map[string]int{}
	for _, e := range s.entries {
		switch {
		case e.Segment != nil:
			b := e.Segment.Boot
			i, ok := idx[b.BootID]
			if !ok {
				out = append(out, BootState{BootID: b.BootID, Generation: b.Generation, KernelRelease: b.KernelRelease})
				i = len(out) - 1
				idx[b.BootID] = i
			}
			out[i].Stored = b.FirstIndex + e.Segment.Count
			out[i].segs = append(out[i].segs, e.Segment)
		case e.Deleted != nil:
			if i, ok := idx[e.Deleted.BootID]; ok {
				if e.Deleted.Through > out[i].Deleted {
					if out[i].DeletedBy == nil {
						out[i].DeletedBy = map[Backend]uint64{}
					}
					m := e.Deleted.Method
					if e.Deleted.Carried {
						m = deletedCarried
					}
					out[i].DeletedBy[m] += e.Deleted.Through - out[i].Deleted
				}
				out[i].Deleted = max(out[i].Deleted, e.Deleted.Through)
				out[i].Carried = out[i].Carried || e.Deleted.Carried
			}
		}
	}
	for i := range out {
		out[i].Retained = out[i].Stored - out[i].Deleted
	}
	return out
}

// joined is the one rule of whether the kernel with bootID is part of the store's chain,
// used by drain (which refuses a boot that is not, ErrNotJoined), export (OpenChain) and
// the live view (Snapshot): a store with no chain segment yet is joined by any boot (the
// chain is that kernel's list); otherwise the boot stored records, or rejoin joined it
// (a join entry, which is all rejoin writes when the new kernel carried and the window
// added nothing). retained is how many records at the head of its list the store holds
// already (BootState.Retained; 0 for a boot joined without a segment).
func (s *Store) joined(bootID string) (retained uint64, ok bool) {
	if bs := s.Boot(bootID); bs != nil {
		return bs.Retained, true
	}
	return 0, s.knowsBoot(bootID) || len(s.ChainSegments()) == 0
}

// Boot returns the state of the kernel with this boot id, or nil.
func (s *Store) Boot(bootID string) *BootState {
	for _, b := range s.Boots() {
		if b.BootID == bootID {
			return &b
		}
	}
	return nil
}
