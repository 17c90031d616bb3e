package handover

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/serialize"
)

// DefaultStoreDir is the store directory of a running system.
const DefaultStoreDir = "/var/lib/imakexec"

// storeOrder is the byte order of segment files: little-endian, as the kernel's canonical
// format and every supported host (spec §13 item 7).
var storeOrder = binary.LittleEndian

// ErrLocked is returned by TryLock when another process holds the store.
var ErrLocked = errors.New("store is locked by another imakexec process")

// ErrBindingMismatch is returned when the store belongs to another TPM power cycle.
var ErrBindingMismatch = errors.New("store belongs to another TPM power cycle")

// Store is a handoff store directory: segments/NNNNNNNN.kexec in the kernel's kexec
// handover format, and manifest.jsonl, a hash-chained list of entries (see Entry). Reading
// needs no lock; writing (Drain, Archive) takes an exclusive flock on DIR/lock.
type Store struct {
	dir      string
	lockf    *os.File
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
	fi, err := os.Lstat(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("store %s is a symlink; the store does not follow symlinks", s.dir)
	}
	f, err := openNoFollow(filepath.Join(s.dir, manifestName), unix.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<30))
	if err != nil {
		return fmt.Errorf("store: read manifest: %w", err)
	}
	entries, last, good, err := parseManifest(b)
	if err != nil {
		return err
	}
	s.entries, s.lastHash, s.good, s.torn = entries, last, int64(good), good != len(b)
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
	segs := s.ChainSegments()
	if len(segs) == 0 {
		return 0
	}
	return segs[len(segs)-1].End()
}

// Bytes is the total size of the segment files.
func (s *Store) Bytes() int64 {
	var n int64
	for _, sg := range s.Segments() {
		n += sg.Size
	}
	return n
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
	DeletedBy map[string]uint64
	// Retained = Stored - Deleted: stored records the kernel still held at the last drain,
	// at the head of its list. A verifier joining the store with the live list skips them.
	Retained uint64
	segs     []Segment
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
			out[i].segs = append(out[i].segs, *e.Segment)
		case e.Deleted != nil:
			if i, ok := idx[e.Deleted.BootID]; ok {
				if e.Deleted.Through > out[i].Deleted {
					if out[i].DeletedBy == nil {
						out[i].DeletedBy = map[string]uint64{}
					}
					m := e.Deleted.Method
					if e.Deleted.Carried {
						m = "carried"
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

// Boot returns the state of the kernel with this boot id, or nil.
func (s *Store) Boot(bootID string) *BootState {
	for _, b := range s.Boots() {
		if b.BootID == bootID {
			return &b
		}
	}
	return nil
}

// Lock takes the store's exclusive lock, creating the directory (0700) and lock file
// (0600) when missing, and waits until ctx is done when another process holds it. The
// manifest is read again under the lock.
func (s *Store) Lock(ctx context.Context) error { return s.lock(ctx, true) }

// TryLock is Lock without waiting: it returns ErrLocked when another process holds it.
func (s *Store) TryLock() error { return s.lock(context.Background(), false) }

func (s *Store) lock(ctx context.Context, wait bool) error {
	if s.lockf != nil {
		return errors.New("store already locked by this process")
	}
	if err := checkDir(s.dir, true); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	f, err := openNoFollow(filepath.Join(s.dir, lockName), unix.O_RDWR|unix.O_CREAT, fileMode)
	if err != nil {
		return fmt.Errorf("store: lock: %w", err)
	}
	delay := 10 * time.Millisecond
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("store: lock: %w", err)
		}
		if !wait {
			f.Close()
			return fmt.Errorf("%w (%s)", ErrLocked, s.dir)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return fmt.Errorf("%w (%s): %w", ErrLocked, s.dir, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
	s.lockf = f
	if err := s.load(); err != nil {
		s.Unlock()
		return err
	}
	return nil
}

// Unlock releases the lock.
func (s *Store) Unlock() error {
	if s.lockf == nil {
		return nil
	}
	err := s.lockf.Close() // closing drops the flock
	s.lockf = nil
	return err
}

func (s *Store) mustLock() error {
	if s.lockf == nil {
		return errors.New("store: not locked")
	}
	return nil
}

// create writes a fresh manifest with only a header (the store must be locked and empty).
func (s *Store) create(tpm TPMBinding, banks []serialize.Bank) error {
	if err := s.mustLock(); err != nil {
		return err
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	h := &Header{Version: ManifestVersion, StoreID: hex.EncodeToString(id[:]), TPM: tpm}
	for _, b := range banks {
		h.Banks = append(h.Banks, b.Name)
	}
	e := Entry{Type: EntryHeader, Index: 0, Time: time.Now().UTC(), Header: h}
	line, err := encodeEntry(&e)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(s.dir, segmentsDir), dirMode); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := checkDir(filepath.Join(s.dir, segmentsDir), false); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.dir, manifestName), append(line, '\n')); err != nil {
		return fmt.Errorf("store: write manifest: %w", err)
	}
	return s.load()
}

// appendEntries appends entries to the manifest (chained to the last line) and fsyncs it.
// A torn last line left by a crash is cut off first. syncHook runs between write and fsync.
func (s *Store) appendEntries(es []Entry, beforeSync func() error) error {
	if err := s.mustLock(); err != nil {
		return err
	}
	var buf []byte
	last := s.lastHash
	now := time.Now().UTC()
	for i := range es {
		es[i].Index = len(s.entries) + i
		es[i].Prev = last
		if es[i].Time.IsZero() {
			es[i].Time = now
		}
		line, err := encodeEntry(&es[i])
		if err != nil {
			return err
		}
		last = lineHash(line)
		buf = append(append(buf, line...), '\n')
	}
	f, err := openNoFollow(filepath.Join(s.dir, manifestName), unix.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("store: append manifest: %w", err)
	}
	defer f.Close()
	if s.torn {
		if err := f.Truncate(s.good); err != nil {
			return fmt.Errorf("store: cut torn manifest line: %w", err)
		}
	}
	if _, err := f.WriteAt(buf, s.good); err != nil {
		// Leave the file as it was: a partial append is cut off by the next writer.
		_ = f.Truncate(s.good)
		return fmt.Errorf("store: append manifest: %w", err)
	}
	if beforeSync != nil {
		if err := beforeSync(); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Truncate(s.good)
		return fmt.Errorf("store: fsync manifest: %w", err)
	}
	s.entries = append(s.entries, es...)
	s.lastHash = last
	s.good += int64(len(buf))
	s.torn = false
	return nil
}

// Archive moves the manifest and segments into archive/NAME (NAME says why and when) so a
// new chain can start; an archived store is never joined. It returns the archive path.
func (s *Store) Archive(reason string) (string, error) {
	if err := s.mustLock(); err != nil {
		return "", err
	}
	if err := checkDir(filepath.Join(s.dir, archiveDir), true); err != nil {
		return "", fmt.Errorf("store: archive: %w", err)
	}
	name := fmt.Sprintf("%s-%s", time.Now().UTC().Format("20060102T150405Z"), sanitize(reason))
	dst := filepath.Join(s.dir, archiveDir, name)
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		dst = filepath.Join(s.dir, archiveDir, name+"."+strconv.Itoa(i))
	}
	if err := os.Mkdir(dst, dirMode); err != nil {
		return "", fmt.Errorf("store: archive: %w", err)
	}
	// Segments first, manifest last: a crash in between leaves no manifest pointing at
	// missing files in the live store... the live manifest is moved last.
	for _, n := range []string{segmentsDir, manifestName} {
		if err := os.Rename(filepath.Join(s.dir, n), filepath.Join(dst, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("store: archive: %w", err)
		}
	}
	if err := syncDir(dst); err != nil {
		return "", err
	}
	if err := syncDir(s.dir); err != nil {
		return "", err
	}
	return dst, s.load()
}

// Archives lists the archived chains (names below DIR/archive).
func (s *Store) Archives() []string {
	ents, err := os.ReadDir(filepath.Join(s.dir, archiveDir))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, s)
}

func segmentName(n int) string { return filepath.Join(segmentsDir, fmt.Sprintf("%08d.kexec", n)) }

// cleanTemp removes temp files a crashed writer left in segments/ and segment files that
// no manifest entry names (a crash between rename and manifest append).
func (s *Store) cleanTemp() {
	ents, err := os.ReadDir(filepath.Join(s.dir, segmentsDir))
	if err != nil {
		return
	}
	known := map[string]bool{}
	for _, sg := range s.Segments() {
		known[filepath.Base(sg.File)] = true
	}
	next := len(s.Segments()) + 1
	for _, e := range ents {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".tmp"):
			os.Remove(filepath.Join(s.dir, segmentsDir, n))
		case !known[n] && n == filepath.Base(segmentName(next)):
			os.Remove(filepath.Join(s.dir, segmentsDir, n))
		}
	}
}

// pcrsJSON and decodePCRs convert PCR values to and from the manifest's hex form.
func pcrsJSON(v serialize.PCRValues) map[string]map[string]string {
	out := map[string]map[string]string{}
	for p, m := range v {
		k := strconv.Itoa(int(p))
		out[k] = map[string]string{}
		for b, d := range m {
			out[k][b] = hex.EncodeToString(d)
		}
	}
	return out
}

func decodePCRs(m map[string]map[string]string) (serialize.PCRValues, error) {
	out := serialize.PCRValues{}
	for k, banks := range m {
		p, err := strconv.ParseUint(k, 10, 32)
		if err != nil || p >= serialize.MaxPCR {
			return nil, fmt.Errorf("PCR index %q", k)
		}
		for b, h := range banks {
			d, err := hex.DecodeString(h)
			if err != nil {
				return nil, fmt.Errorf("PCR %d bank %s: %w", p, b, err)
			}
			out.Set(uint32(p), b, d)
		}
	}
	return out, nil
}

// bootHasher is the running SHA-256 over a boot's records in kexec form (Segment.BootHash).
type bootHasher struct{ h hash.Hash }

func newBootHasher(state string) (*bootHasher, error) {
	h := sha256.New()
	if state != "" {
		b, err := hex.DecodeString(state)
		if err != nil {
			return nil, err
		}
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(b); err != nil {
			return nil, err
		}
	}
	return &bootHasher{h: h}, nil
}

func (b *bootHasher) state() string {
	st, _ := b.h.(encoding.BinaryMarshaler).MarshalBinary()
	return hex.EncodeToString(st)
}

func (b *bootHasher) sum() string { return hex.EncodeToString(b.h.Sum(nil)) }

// ChainReader streams the chain's records in order, segment after segment, checking each
// segment file's size, SHA-256 and record count against the manifest as it goes. It
// implements serialize.Source; records are valid until the next call.
type ChainReader struct {
	s    *Store
	segs []Segment
	i    int
	f    *os.File
	hr   *hashingReader
	kr   *serialize.KexecReader
	n    uint64
	seq  uint64
	err  error
	all  bool // duplicate segments included: no sequence continuity
	// single reads one segment on its own: no numbering or continuity checks.
	single bool
}

// Reader returns a reader over every record of the chain. Close it when done.
func (s *Store) Reader() *ChainReader { return &ChainReader{s: s, segs: s.ChainSegments(), i: -1} }

// allReader reads every segment file, duplicate segments included (Check).
func (s *Store) allReader() *ChainReader {
	return &ChainReader{s: s, segs: s.Segments(), i: -1, all: true}
}

// Segment is the segment of the record last returned.
func (c *ChainReader) Segment() *Segment {
	if c.i < 0 || c.i >= len(c.segs) {
		return nil
	}
	return &c.segs[c.i]
}

// Seq is the global sequence number of the record last returned.
func (c *ChainReader) Seq() uint64 { return c.seq }

// Next returns the next record, or io.EOF after the last one.
func (c *ChainReader) Next() (*serialize.Record, error) {
	if c.err != nil {
		return nil, c.err
	}
	for {
		if c.kr == nil {
			c.i++
			if c.i >= len(c.segs) {
				c.err = io.EOF
				return nil, io.EOF
			}
			if err := c.open(); err != nil {
				c.err = err
				return nil, err
			}
		}
		rec, err := c.kr.Next()
		if err == io.EOF {
			if err := c.finish(); err != nil {
				c.err = err
				return nil, err
			}
			continue
		}
		sg := &c.segs[c.i]
		if err != nil {
			c.err = &TamperError{File: sg.File, What: fmt.Sprintf("segment %d does not parse: %v", sg.Number, err)}
			return nil, c.err
		}
		c.seq = sg.FirstSeq + c.n
		c.n++
		return rec, nil
	}
}

func (c *ChainReader) open() error {
	sg := &c.segs[c.i]
	prevNum, prevEnd := 0, uint64(0)
	for j := c.i - 1; j >= 0; j-- {
		if c.segs[j].InChain() || c.all {
			prevNum = c.segs[j].Number
			break
		}
	}
	for j := c.i - 1; j >= 0; j-- {
		if c.segs[j].InChain() {
			prevEnd = c.segs[j].End()
			break
		}
	}
	badNum := sg.Number <= prevNum || (c.all && sg.Number != c.i+1)
	if !c.single && (badNum || (sg.InChain() && sg.FirstSeq != prevEnd)) {
		return &TamperError{File: manifestName, What: fmt.Sprintf("segment %d (#%d in the manifest) does not continue the chain", sg.Number, c.i+1)}
	}
	if filepath.Clean(sg.File) != segmentName(sg.Number) {
		return &TamperError{File: manifestName, What: fmt.Sprintf("segment %d names file %q, want %q", sg.Number, sg.File, segmentName(sg.Number))}
	}
	f, err := openNoFollow(filepath.Join(c.s.dir, sg.File), unix.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d is missing", sg.Number)}
		}
		return fmt.Errorf("store: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return &TamperError{File: sg.File, What: "not a regular file"}
	}
	if fi.Size() != sg.Size {
		f.Close()
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d has %d bytes, manifest says %d", sg.Number, fi.Size(), sg.Size)}
	}
	c.f = f
	c.hr = &hashingReader{r: f, h: sha256.New()}
	kr, err := serialize.NewKexecReader(bufio.NewReaderSize(c.hr, 256<<10), storeOrder)
	if err != nil {
		c.close()
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d: %v", sg.Number, err)}
	}
	if kr.Header.Count != sg.Count {
		c.close()
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d holds %d records, manifest says %d", sg.Number, kr.Header.Count, sg.Count)}
	}
	c.kr = kr
	c.n = 0
	return nil
}

func (c *ChainReader) finish() error {
	sg := &c.segs[c.i]
	// Read any bytes after the buffer so the hash covers the whole file.
	if _, err := io.Copy(io.Discard, c.hr); err != nil {
		c.close()
		return err
	}
	sum := hex.EncodeToString(c.hr.h.Sum(nil))
	c.close()
	if sum != sg.SHA256 {
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d SHA-256 is %.16s…, manifest says %.16s…", sg.Number, sum, sg.SHA256)}
	}
	return nil
}

func (c *ChainReader) close() {
	if c.f != nil {
		c.f.Close()
	}
	c.f, c.kr, c.hr = nil, nil, nil
}

// Close releases the open segment file.
func (c *ChainReader) Close() error { c.close(); return nil }

type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

// CheckResult summarises a full store check.
type CheckResult struct {
	Segments int
	Records  uint64
	Bytes    int64
	PCRs     serialize.PCRValues // replayed values after the last segment
}

// Check verifies the whole store without a TPM: the manifest chain (already checked when
// read), every segment file (present, regular, size, SHA-256, record count, sequence
// continuity), the boot hashes, and a replay that reproduces every segment's recorded PCR
// values. Any difference is a *TamperError naming the file, line or segment. It does not
// say the chain matches the TPM; verify does that.
func (s *Store) Check() (*CheckResult, error) {
	res := &CheckResult{PCRs: serialize.PCRValues{}}
	h := s.Header()
	if h == nil {
		return res, nil
	}
	var banks []serialize.Bank
	for _, n := range h.Banks {
		b, err := serialize.ParseBank(n)
		if err != nil {
			return nil, &TamperError{File: manifestName, Line: 1, What: err.Error()}
		}
		banks = append(banks, b)
	}
	segs := s.Segments()
	lineOf := map[int]int{}
	for _, e := range s.entries {
		if e.Segment != nil {
			lineOf[e.Segment.Number] = e.Index + 1
		}
	}
	cr := s.allReader()
	defer cr.Close()
	var (
		rp      *serialize.Replayer
		bh      *bootHasher
		cur     = -1
		prevPCR = serialize.PCRValues{}
		buf     []byte
		dg      = serialize.NewDigester()
		bootEnd = map[string]uint64{}
		bootSt  = map[string]string{}
		// sums[boot][end] is the boot hash sum of that boot's records [0, end).
		sums = map[string]map[uint64]string{}
	)
	endSeg := func(i int) error {
		sg := &segs[i]
		if bh.sum() != sg.BootSum || bh.state() != sg.BootHash {
			return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d boot hash differs from the manifest (line %d)", sg.Number, lineOf[sg.Number])}
		}
		end := sg.Boot.FirstIndex + sg.Count
		bootEnd[sg.Boot.BootID] = end
		bootSt[sg.Boot.BootID] = sg.BootHash
		if sums[sg.Boot.BootID] == nil {
			sums[sg.Boot.BootID] = map[uint64]string{0: hex.EncodeToString(sha256.New().Sum(nil))}
		}
		sums[sg.Boot.BootID][end] = sg.BootSum
		res.Segments++
		res.Bytes += sg.Size
		if d := sg.Duplicates; d != nil {
			// A carried head from index 0 must hash like the old kernel's stored list.
			if want, ok := sums[d.BootID][d.To]; d.From == 0 && ok && want != sg.BootSum {
				return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d does not repeat records [0,%d) of boot %s as it claims (line %d)", sg.Number, d.To, d.BootID, lineOf[sg.Number])}
			}
			return nil
		}
		got := rp.State()
		want, err := decodePCRs(sg.PCRs)
		if err != nil {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: err.Error()}
		}
		if !pcrsEqual(got, want) {
			return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d replays to PCR values other than the manifest records (line %d)", sg.Number, lineOf[sg.Number])}
		}
		prevPCR = got
		return nil
	}
	startSeg := func(i int) error {
		sg := &segs[i]
		if end, ok := bootEnd[sg.Boot.BootID]; ok && sg.Boot.FirstIndex != end {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: fmt.Sprintf("segment %d starts at index %d of boot %s, the previous one ended at %d", sg.Number, sg.Boot.FirstIndex, sg.Boot.BootID, end)}
		}
		var err error
		if bh, err = newBootHasher(bootSt[sg.Boot.BootID]); err != nil {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: err.Error()}
		}
		rp = nil
		if !sg.InChain() {
			return nil
		}
		scheme, _ := serialize.ParseScheme(sg.Scheme)
		rp, err = serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Scheme: scheme, Order: storeOrder, Start: prevPCR, DigestBank: &serialize.SHA1})
		return err
	}
	for {
		rec, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if cr.i != cur {
			if cur >= 0 {
				if err := endSeg(cur); err != nil {
					return nil, err
				}
			}
			// empty segments are not written, so every segment yields a record
			cur = cr.i
			if err := startSeg(cur); err != nil {
				return nil, err
			}
		}
		if rp != nil {
			if err := rp.Add(rec); err != nil {
				return nil, &TamperError{File: segs[cur].File, What: fmt.Sprintf("record %d: %v", cr.n-1, err)}
			}
			res.Records++
		}
		if buf, err = serialize.AppendKexecRecord(buf[:0], rec, dg, storeOrder); err != nil {
			return nil, err
		}
		bh.h.Write(buf)
	}
	if cur >= 0 {
		if err := endSeg(cur); err != nil {
			return nil, err
		}
	}
	if res.Segments != len(segs) {
		return nil, &TamperError{File: manifestName, What: fmt.Sprintf("%d segments checked of %d", res.Segments, len(segs))}
	}
	res.PCRs = prevPCR
	return res, nil
}

func pcrsEqual(a, b serialize.PCRValues) bool {
	if len(a) != len(b) {
		return false
	}
	for p, m := range a {
		if len(m) != len(b[p]) {
			return false
		}
		for bank, v := range m {
			if hex.EncodeToString(v) != hex.EncodeToString(b[p][bank]) {
				return false
			}
		}
	}
	return true
}
