package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/imakexec/imakexec/serialize"
)

// A consistent point of the joined log for readers that must not make drains wait (the
// view of `imakexec serve`): the manifest and the running kernel's records the store does
// not hold, read together.

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
	// Scheme is the running kernel's extend scheme (KernelInfo.Scheme).
	Scheme serialize.Scheme
}

// Records is the length of the joined log: the store's chain plus Live.
func (sn *Snapshot) Records() uint64 { return sn.Store.Records() + uint64(len(sn.Live)) }

// ReadSnapshot reads the store's manifest and the running kernel's unstored records as one
// point of the log, without taking the store's lock, so a drain never waits for it:
//
//   - the kernel's list files (staged and current) are all opened before any is read, so on
//     7.2 no A, D or N can run during the read (one writer or many readers,
//     ima_measure_lock, 7.2); a drain's open meets EBUSY for that time and retries;
//   - the manifest is looked at before and after: a drain or rejoin that committed
//     anything in between changes it, and the snapshot is taken again;
//   - a kernel that holds fewer records than the store says it kept means a deletion came
//     after the manifest was read (its "deleted" entry follows the delete): again.
//
// Without a store the chain is the kernel's whole list.
func ReadSnapshot(ctx context.Context, o SnapshotOptions) (*Snapshot, error) {
	return NewSnapshotter(o).Read(ctx)
}

// Snapshotter takes snapshots again and again (ReadSnapshot), keeping what does not change
// between them: the parsed manifest while its stamp is the same, the kernel's probed files
// while the boot id is. It is safe for concurrent use.
type Snapshotter struct {
	o      SnapshotOptions
	mu     sync.Mutex
	stamp  manifestStamp
	store  *Store
	bootID string
	k      *Kernel
}

// NewSnapshotter returns a Snapshotter.
func NewSnapshotter(o SnapshotOptions) *Snapshotter {
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	if o.Busy <= 0 {
		o.Busy = 2 * time.Second
	}
	return &Snapshotter{o: o}
}

// Read takes a snapshot (see ReadSnapshot).
func (sr *Snapshotter) Read(ctx context.Context) (*Snapshot, error) {
	delay := time.Millisecond
	for try := 0; ; try++ {
		sn, again, err := sr.read(ctx)
		if err != nil || !again {
			return sn, err
		}
		if try >= 100 {
			return nil, fmt.Errorf("read snapshot: the store changed during each of %d reads of the kernel's list", try+1)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// manifestStamp identifies the manifest's state: it is only appended to, and replaced
// (another inode) when the store is archived.
type manifestStamp struct {
	exists bool
	ino    uint64
	size   int64
	mtime  time.Time
}

func stampManifest(dir string) (manifestStamp, error) {
	fi, err := os.Lstat(filepath.Join(dir, manifestName))
	if errors.Is(err, os.ErrNotExist) {
		return manifestStamp{}, nil
	}
	if err != nil {
		return manifestStamp{}, fmt.Errorf("store: %w", err)
	}
	st := manifestStamp{exists: true, size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

// cached returns the parsed store for this manifest stamp and the kernel for this boot.
func (sr *Snapshotter) cached(st manifestStamp, bootID string) (*Store, *Kernel, error) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if sr.store == nil || sr.stamp != st {
		s, err := OpenStore(sr.o.StoreDir)
		if err != nil {
			return nil, nil, err
		}
		sr.store, sr.stamp = s, st
	}
	if sr.k == nil || sr.bootID != bootID {
		k, err := ProbeKernel(sr.o.Paths)
		if err != nil {
			return nil, nil, err
		}
		k.Busy = sr.o.Busy
		sr.k, sr.bootID = k, bootID
	}
	return sr.store, sr.k, nil
}

func (sr *Snapshotter) read(ctx context.Context) (sn *Snapshot, again bool, err error) {
	o := sr.o
	ki, err := ReadKernelInfo(o.Paths)
	if err != nil {
		return nil, false, err
	}
	before, err := stampManifest(o.StoreDir)
	if err != nil {
		return nil, false, err
	}
	s, k, err := sr.cached(before, ki.BootID)
	if err != nil {
		return nil, false, err
	}
	sn = &Snapshot{Store: s, BootID: ki.BootID, Scheme: ki.Scheme(), Joined: true}
	skip, joined := s.joined(ki.BootID)
	if !joined {
		sn.Joined = false
		return sn, false, nil
	}
	live, held, err := readHeld(ctx, k, skip)
	if err != nil {
		return nil, false, err
	}
	after, err := stampManifest(o.StoreDir)
	if err != nil {
		return nil, false, err
	}
	if after != before || held < skip {
		return nil, true, nil
	}
	sn.Live = live
	return sn, false, nil
}

// readHeld reads the kernel's held records (staged, then current) past the first skip,
// with every list file opened before the first is read.
func readHeld(ctx context.Context, k *Kernel, skip uint64) (recs []serialize.Record, held uint64, err error) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, name := range []string{k.Staged, k.List} {
		if name == "" {
			continue
		}
		f, err := k.openKernel(ctx, name, os.O_RDONLY)
		if err != nil {
			return nil, 0, fmt.Errorf("read %s: %w", name, err)
		}
		files = append(files, f)
	}
	for _, f := range files {
		src, err := listReader(f)
		if err != nil {
			return nil, 0, err
		}
		for {
			rec, err := src.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, 0, fmt.Errorf("read %s: %w", f.Name(), err)
			}
			held++
			if held > skip {
				recs = append(recs, rec.Clone())
			}
		}
	}
	return recs, held, nil
}

// SegmentReader reads one segment's records with the checks of the chain reader (file
// name, size, record count, SHA-256 against the manifest); Seq numbers them in the chain.
func (s *Store) SegmentReader(sg Segment) *ChainReader {
	return &ChainReader{s: s, segs: []Segment{sg}, i: -1, single: true}
}

// OpenSegment opens a segment file for reading as every store file is read (openat from the
// store's descriptor, no symlink at any level, a regular file of ours). Segment files
// never change once their manifest entry is written.
func (s *Store) OpenSegment(sg Segment) (*os.File, error) {
	if filepath.Clean(sg.File) != segmentName(sg.Number) {
		return nil, &TamperError{File: manifestName, What: fmt.Sprintf("segment %d names file %q, want %q", sg.Number, sg.File, segmentName(sg.Number))}
	}
	f, err := openStoreFile(s.dir, sg.File)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return f, nil
}

// StoreOrder is the byte order of segment files and of the lists exported from them.
var StoreOrder serialize.ByteOrder = storeOrder
