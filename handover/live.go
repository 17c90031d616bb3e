package handover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/serialize"
)

// A consistent point of the joined log for readers that must not block drains (the view of
// `imakexec serve`): the manifest and the running kernel's records the store does not hold,
// read together.

// SnapshotOptions configures ReadSnapshot.
type SnapshotOptions struct {
	Paths    Paths
	StoreDir string
	// Busy bounds the EBUSY retries on the kernel's files (default 2 s): another writer
	// holds them (7.2: one writer or many readers).
	Busy time.Duration
}

// Snapshot is the joined log at one moment: the store's chain (Store) followed by Live.
type Snapshot struct {
	Store *Store
	// Joined is false when the store exists and the running kernel (BootID) has not been
	// joined to it yet (between a kexec or cold boot and rejoin): Live is then empty, as
	// the new list cannot be numbered before the join.
	Joined bool
	// Live are the running kernel's records (staged, then current) after those the store
	// holds, in the kernel's order; for an empty store, the whole list.
	Live   []serialize.Record
	BootID string
	// Scheme is the running kernel's extend scheme ("hash" or "pad").
	Scheme string
}

// Records is the length of the joined log: the store's chain plus Live.
func (sn *Snapshot) Records() uint64 { return sn.Store.Records() + uint64(len(sn.Live)) }

// ReadSnapshot reads the store's manifest and the running kernel's unstored records as one
// point of the log. It holds a shared flock on the store's lock file while it reads, so no
// drain or rejoin (which take it exclusively) runs in between: a drain that stored and
// deleted records between the two reads would otherwise make them vanish from both. A
// drain waits for it at most the time of one read of the kernel's unstored records. It
// opens the kernel's files only for that read.
func ReadSnapshot(ctx context.Context, o SnapshotOptions) (*Snapshot, error) {
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	if o.Busy <= 0 {
		o.Busy = 2 * time.Second
	}
	for try := 0; ; try++ {
		sn, again, err := readSnapshot(ctx, o)
		if err != nil || !again {
			return sn, err
		}
		if try >= 20 {
			return nil, fmt.Errorf("read snapshot: the store kept appearing while the kernel's list was read")
		}
	}
}

func readSnapshot(ctx context.Context, o SnapshotOptions) (sn *Snapshot, again bool, err error) {
	ki, err := ReadKernelInfo(o.Paths)
	if err != nil {
		return nil, false, err
	}
	unlock, locked, err := sharedLock(ctx, o.StoreDir)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	s, err := OpenStore(o.StoreDir)
	if err != nil {
		return nil, false, err
	}
	sn = &Snapshot{Store: s, BootID: ki.BootID, Scheme: ki.Scheme().String(), Joined: true}
	var skip uint64
	if s.Exists() {
		bs := s.Boot(ki.BootID)
		if bs == nil {
			sn.Joined = false
			return sn, false, nil
		}
		skip = bs.Retained
	}
	k, err := ProbeKernel(o.Paths)
	if err != nil {
		return nil, false, err
	}
	k.Busy = o.Busy
	live, held, err := readLive(ctx, k, skip)
	if err != nil {
		return nil, false, err
	}
	if held < skip {
		return nil, false, fmt.Errorf("%w: the kernel holds %d records, fewer than the %d stored ones it held at the last drain: records were deleted by something other than imakexec", ErrGap, held, skip)
	}
	if !locked {
		// No lock file: no store when the lock was looked for. A first drain may have made
		// one (and deleted records) since; then read again.
		if _, err := os.Lstat(filepath.Join(o.StoreDir, manifestName)); err == nil {
			return nil, true, nil
		}
	}
	sn.Live = live
	return sn, false, nil
}

// sharedLock takes flock(LOCK_SH) on DIR/lock, waiting while a writer holds it. Without a
// lock file (no store yet) it takes nothing (locked is false); it never creates files.
func sharedLock(ctx context.Context, dir string) (unlock func(), locked bool, err error) {
	f, err := openNoFollow(filepath.Join(dir, lockName), unix.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("store: lock: %w", err)
	}
	delay := 2 * time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, true, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, false, fmt.Errorf("store: lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, false, fmt.Errorf("store: wait for a drain to finish: %w", ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// SegmentReader reads one segment's records with the checks of the chain reader (file
// name, size, record count, SHA-256 against the manifest); Seq numbers them in the chain.
func (s *Store) SegmentReader(sg Segment) *ChainReader {
	return &ChainReader{s: s, segs: []Segment{sg}, i: -1, single: true}
}

// OpenSegment opens a segment file for reading, without following symlinks. Segment files
// never change once their manifest entry is written.
func (s *Store) OpenSegment(sg Segment) (*os.File, error) {
	if filepath.Clean(sg.File) != segmentName(sg.Number) {
		return nil, &TamperError{File: manifestName, What: fmt.Sprintf("segment %d names file %q, want %q", sg.Number, sg.File, segmentName(sg.Number))}
	}
	f, err := openNoFollow(filepath.Join(s.dir, sg.File), unix.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return f, nil
}

// StoreOrder is the byte order of segment files and of the lists exported from them.
var StoreOrder serialize.ByteOrder = storeOrder
