package handover

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/serialize"
)

// Step names a point in a drain, for fault injection in tests (DrainOptions.Hook).
type Step string

// Drain steps, in order.
const (
	StepLocked          Step = "locked"           // store locked and loaded
	StepStaged          Step = "staged"           // after A (staged backend)
	StepRead            Step = "read"             // after each record read from the kernel (n = records read)
	StepWrite           Step = "write"            // after each record written to the temp segment (n = records written)
	StepSegmentWritten  Step = "segment-written"  // segment complete, before fsync
	StepSegmentSynced   Step = "segment-synced"   // segment fsynced and renamed, before read-back
	StepManifestWritten Step = "manifest-written" // manifest line written, before fsync
	StepManifestSynced  Step = "manifest-synced"  // manifest durable, before the kernel delete
	StepDeleted         Step = "deleted"          // kernel delete done, before the deletion entry
)

// ErrStoreMismatch: the kernel's list does not continue what the store holds for this boot.
var ErrStoreMismatch = errors.New("kernel list does not match the store")

// ErrGap: the kernel deleted records this store never received.
var ErrGap = errors.New("records were deleted that the store does not hold")

// DrainOptions configures Drain.
type DrainOptions struct {
	Paths    Paths
	StoreDir string // default DefaultStoreDir
	Backend  string // auto (default), staged, delete-n, trim-log, snapshot
	// TPM is required: the store is bound to its resetCount.
	TPM transport.TPM
	// Banks replayed into the manifest when a new store is created; default: the TPM's
	// active banks that the kernel computes (per-bank list files, 6.10+), else SHA1 and
	// SHA256 of those the TPM has.
	Banks []serialize.Bank
	// NoWait makes Drain fail with ErrLocked instead of waiting for another drain.
	NoWait bool
	// BusyTimeout bounds EBUSY retries on the kernel files (default 30 s).
	BusyTimeout time.Duration
	// Hook, when set, is called at every Step; an error aborts the drain right there, as
	// a crash would (tests).
	Hook func(step Step, n uint64) error
	// KeepWritten, when > 0, makes DrainResult.Written hold the bytes this drain wrote to
	// the store, if they total at most KeepWritten bytes. The kexec flow uses it to carry
	// the store without opening its files after the last drain: each open for reading may
	// be a FILE_CHECK measurement in the kexec window (design.md, "kexec").
	KeepWritten int64
}

// Written is what one drain wrote to the store, byte for byte (DrainOptions.KeepWritten).
type Written struct {
	// Segments are the new segment files, named relative to the store ("segments/…").
	Segments []WrittenFile
	// ManifestName is the manifest's name relative to the store. The manifest now holds
	// its first ManifestFrom bytes as they were when the drain took the store, followed by
	// Manifest, the lines this drain appended. ManifestFrom is 0 when the drain created the
	// manifest (a new store, or after archiving another power cycle's chain); otherwise
	// ManifestPrev is the SHA-256 (hex) of the line that ends at ManifestFrom, which the
	// first appended line names as its prev: a copy of the manifest taken before the drain
	// can be checked against it and joined with Manifest without reading the file again.
	ManifestName string
	ManifestFrom int64
	ManifestPrev string
	Manifest     []byte
}

// WrittenFile is one file a drain wrote whole.
type WrittenFile struct {
	Name string
	Data []byte
}

// keeper collects the bytes a drain writes, up to a bound; a nil keeper keeps nothing.
type keeper struct {
	limit, used int64
	over        bool
	segs        []WrittenFile
}

func (k *keeper) wants(n int64) bool {
	if k == nil || k.over {
		return false
	}
	if k.used+n > k.limit {
		k.over, k.segs = true, nil
		return false
	}
	return true
}

func (k *keeper) add(f WrittenFile) {
	k.used += int64(len(f.Data))
	k.segs = append(k.segs, f)
}

// DrainResult says what a drain did.
type DrainResult struct {
	Backend    string
	StoreDir   string
	Archived   string // set when a store of another power cycle was archived
	BootID     string
	Generation int
	Held       uint64    // records the kernel held when read (staged or current list)
	Retained   uint64    // of those, already in the store (left by a crash or a snapshot)
	Stored     uint64    // records newly persisted
	Deleted    uint64    // records the kernel deleted in this run
	Resolved   uint64    // deletions of an interrupted earlier run confirmed by this one
	Carried    bool      // a delete met ESTALE: the next kernel carries those records
	Segments   []Segment // segments written
	Chain      uint64    // records in the chain after the drain
	PCRs       serialize.PCRValues
	// Written holds the bytes the drain wrote, with DrainOptions.KeepWritten; nil when
	// they exceeded it.
	Written *Written
}

// Drain moves the kernel's measurement records into the store: read, persist (fsync, read
// back, manifest), and only then delete with the backend's command. It is idempotent and
// resumable: a run interrupted at any point is finished by the next one without losing or
// duplicating a record (design.md invariant 1).
func Drain(ctx context.Context, o DrainOptions) (*DrainResult, error) {
	if o.TPM == nil {
		return nil, fmt.Errorf("%w: drain binds the store to the TPM power cycle and needs a TPM", ErrNoTPM)
	}
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	// 7.2 records the writer per thread (spec §12.2): keep every open and close of the
	// kernel files on one OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	d := &drainer{o: o, res: &DrainResult{StoreDir: o.StoreDir}}
	var err error
	if d.ki, err = ReadKernelInfo(o.Paths); err != nil {
		return nil, err
	}
	if d.k, err = ProbeKernel(o.Paths); err != nil {
		return nil, err
	}
	if o.BusyTimeout > 0 {
		d.k.Busy = o.BusyTimeout
	}
	if d.res.Backend, err = d.k.Choose(o.Backend, d.ki); err != nil {
		return nil, err
	}
	reset, restart, err := ReadClock(o.TPM)
	if err != nil {
		return nil, err
	}
	d.clock = TPMBinding{ResetCount: reset, RestartCount: restart}

	d.s = &Store{dir: o.StoreDir}
	if o.NoWait {
		err = d.s.TryLock()
	} else {
		err = d.s.Lock(ctx)
	}
	if err != nil {
		return nil, err
	}
	defer d.s.Unlock()
	// Where this drain's manifest lines start (DrainResult.Written).
	mFrom, mPrev, mN := d.s.good, d.s.lastHash, len(d.s.entries)
	if o.KeepWritten > 0 {
		d.keep = &keeper{limit: o.KeepWritten}
	}
	if err := d.hook(StepLocked, 0); err != nil {
		return nil, err
	}
	if h := d.s.Header(); h != nil && h.TPM.ResetCount != reset {
		dst, err := d.s.Archive(fmt.Sprintf("tpm-reset-%d", h.TPM.ResetCount))
		if err != nil {
			return nil, fmt.Errorf("archive store of TPM resetCount %d: %w", h.TPM.ResetCount, err)
		}
		d.res.Archived = dst
	}
	if !d.s.Exists() {
		banks := o.Banks
		if len(banks) == 0 {
			if banks, err = defaultBanks(o.TPM, d.k); err != nil {
				return nil, err
			}
		}
		if err := d.s.create(d.clock, banks); err != nil {
			return nil, err
		}
		mFrom, mPrev, mN = 0, "", 0
	}
	d.s.cleanTemp()
	if err := d.setup(); err != nil {
		return nil, err
	}
	switch d.res.Backend {
	case BackendStaged:
		err = d.drainStaged(ctx)
	case BackendDeleteN:
		err = d.drainList(ctx, true)
	case BackendTrimLog:
		err = d.drainTrim(ctx)
	default:
		err = d.drainList(ctx, false)
	}
	if err != nil {
		return d.res, err
	}
	d.res.Chain = d.s.Records()
	d.res.PCRs, _ = d.s.PCRs()
	d.res.Written = d.written(mFrom, mPrev, mN)
	return d.res, nil
}

// written assembles DrainResult.Written: the segments kept by readBack and the manifest
// lines appended since entry n, encoded again from the entries and checked against the
// manifest's hash chain and length (nil when anything differs or the bound is passed).
func (d *drainer) written(from int64, prev string, n int) *Written {
	if d.keep == nil || d.keep.over {
		return nil
	}
	w := &Written{Segments: d.keep.segs, ManifestName: manifestName, ManifestFrom: from, ManifestPrev: prev}
	last := prev
	for _, e := range d.s.entries[n:] {
		if e.Prev != last {
			return nil
		}
		line, err := encodeEntry(&e)
		if err != nil {
			return nil
		}
		last = lineHash(line)
		w.Manifest = append(append(w.Manifest, line...), '\n')
	}
	if last != d.s.lastHash || from+int64(len(w.Manifest)) != d.s.good || !d.keep.wants(int64(len(w.Manifest))) {
		return nil
	}
	return w
}

// defaultBanks picks the banks to replay: TPM banks the kernel extends with a hash this
// package computes.
func defaultBanks(t transport.TPM, k *Kernel) ([]serialize.Bank, error) {
	tb, err := ActiveBanks(t)
	if err != nil {
		return nil, err
	}
	var out []serialize.Bank
	for _, b := range tb {
		if !b.KernelHash() || b.Name == serialize.SM3.Name {
			continue
		}
		if len(k.Banks) > 0 {
			if !slices.Contains(k.Banks, b.Name) {
				continue
			}
		} else if b.Name != "sha1" && b.Name != "sha256" {
			continue
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no PCR bank both the TPM and the kernel use that imakexec can replay (TPM banks %v, kernel banks %v)", tb, k.Banks)
	}
	return out, nil
}

type drainer struct {
	o     DrainOptions
	ki    KernelInfo
	k     *Kernel
	s     *Store
	clock TPMBinding
	res   *DrainResult
	banks []serialize.Bank
	gen   int
	keep  *keeper // bytes written, for DrainResult.Written
}

func (d *drainer) hook(s Step, n uint64) error {
	if d.o.Hook == nil {
		return nil
	}
	if err := d.o.Hook(s, n); err != nil {
		return fmt.Errorf("drain interrupted at %s: %w", s, err)
	}
	return nil
}

func (d *drainer) setup() error {
	for _, n := range d.s.Header().Banks {
		b, err := serialize.ParseBank(n)
		if err != nil {
			return &TamperError{File: manifestName, Line: 1, What: err.Error()}
		}
		d.banks = append(d.banks, b)
	}
	d.res.BootID = d.ki.BootID
	segs := d.s.Segments()
	d.gen = 0
	if bs := d.s.Boot(d.ki.BootID); bs != nil {
		d.gen = bs.Generation
	} else if len(segs) > 0 {
		d.gen = segs[len(segs)-1].Boot.Generation + 1
	}
	d.res.Generation = d.gen
	return nil
}

// boundary is a point in this boot's list where a deletion may have stopped: the end of a
// stored segment (or the confirmed deletion point), with the boot hash state there.
type boundary struct {
	at     uint64
	state  string
	source string
}

// bootView is the store's view of the running kernel.
type bootView struct {
	stored, deleted uint64
	sum             string // boot hash sum at stored
	bounds          []boundary
	lastSource      string
}

func (d *drainer) view() bootView {
	var v bootView
	bs := d.s.Boot(d.ki.BootID)
	if bs == nil {
		v.bounds = []boundary{{at: 0}}
		return v
	}
	// A delete refused with ESTALE (kexec under way) is recorded as carried: the next kernel
	// holds those records, but this one still does until the jump. A drain before the jump
	// must find them at the head of the list and skip them, not store them twice.
	v.stored, v.deleted = bs.Stored, bs.Deleted-bs.DeletedBy[deletedCarried]
	if v.deleted == 0 {
		v.bounds = append(v.bounds, boundary{at: 0})
	}
	for _, sg := range bs.segs {
		end := sg.Boot.FirstIndex + sg.Count
		if end >= v.deleted {
			v.bounds = append(v.bounds, boundary{at: end, state: sg.BootHash, source: sg.Source})
		}
		v.sum = sg.BootSum
		v.lastSource = sg.Source
	}
	return v
}

// heldReader opens the kernel's held records from their start.
type heldReader func() (serialize.Source, error)

// resolve decides how many of the stored-but-undeleted records of this boot the kernel
// still holds at the head of its list (the rest were deleted by an interrupted run). When
// forced is non-nil the deletion point is known (ima_trim_log's T, or an empty staged
// list); otherwise the head of the held list is compared with the boot hashes at every
// possible deletion point. It returns the deletion point.
func (d *drainer) resolve(v bootView, open heldReader, forced *uint64) (uint64, error) {
	if v.stored == v.deleted {
		if forced != nil && *forced > v.stored {
			return 0, d.gapErr(v, *forced)
		}
		if forced != nil && *forced < v.stored {
			return 0, fmt.Errorf("%w: the kernel reports %d records deleted since boot, the store recorded %d", ErrStoreMismatch, *forced, v.deleted)
		}
		return v.deleted, nil
	}
	if forced != nil {
		if *forced > v.stored {
			return 0, d.gapErr(v, *forced)
		}
		if *forced < v.deleted {
			return 0, fmt.Errorf("%w: the kernel reports %d records deleted since boot, the store recorded %d", ErrStoreMismatch, *forced, v.deleted)
		}
		return *forced, nil
	}
	// Candidates below stored; stored itself (everything deleted) is the fallback.
	var cands []boundary
	for _, b := range v.bounds {
		if b.at < v.stored {
			cands = append(cands, b)
		}
	}
	src, err := open()
	if err != nil {
		return 0, err
	}
	hs := make([]*bootHasher, len(cands))
	for i, c := range cands {
		if hs[i], err = newBootHasher(c.state); err != nil {
			return 0, err
		}
	}
	need := v.stored - cands[0].at
	dg := serialize.NewDigester()
	var buf []byte
	match := -1
	for i := uint64(0); i <= need; i++ {
		for ci := range cands {
			if i == v.stored-cands[ci].at && hs[ci] != nil {
				if hs[ci].sum() == v.sum && match < 0 {
					match = ci
				}
				hs[ci] = nil
			}
		}
		if match >= 0 || i == need {
			break
		}
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read kernel list: %w", err)
		}
		if buf, err = serialize.AppendKexecRecord(buf[:0], rec, dg, storeOrder); err != nil {
			return 0, err
		}
		for _, h := range hs {
			if h != nil {
				h.h.Write(buf)
			}
		}
	}
	if match >= 0 {
		return cands[match].at, nil
	}
	return v.stored, nil
}

func (d *drainer) gapErr(v bootView, deleted uint64) error {
	return fmt.Errorf("%w: the kernel deleted %d records of this boot, the store holds %d; records %d..%d are lost for this power cycle", ErrGap, deleted, v.stored, v.stored, deleted-1)
}

// pass reads the held list: the first stored-delPoint records must be the stored ones
// (checked against the boot hash), the rest are persisted as a new segment. It returns
// the records read, how many were already stored, and whether the deletable range
// [delPoint, end) holds a record that is not a violation.
type passResult struct {
	held, retained, stored uint64
	anyReal                bool
	seg                    *Segment
}

func (d *drainer) pass(v bootView, delPoint uint64, open heldReader, source string) (*passResult, error) {
	pr := &passResult{}
	skip := v.stored - delPoint
	var st string
	for _, b := range v.bounds {
		if b.at == delPoint {
			st = b.state
		}
	}
	if delPoint > 0 && st == "" && skip > 0 {
		return nil, fmt.Errorf("%w: no boot hash at index %d", ErrStoreMismatch, delPoint)
	}
	vh, err := newBootHasher(st)
	if err != nil {
		return nil, err
	}
	src, err := open()
	if err != nil {
		return nil, err
	}
	dg := serialize.NewDigester()
	var buf []byte
	var sw *segWriter
	for {
		rec, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if sw != nil {
				sw.abort()
			}
			return nil, fmt.Errorf("read kernel list: %w", err)
		}
		pr.held++
		if !rec.IsViolation() {
			pr.anyReal = true
		}
		if err := d.hook(StepRead, pr.held); err != nil {
			if sw != nil {
				sw.abort()
			}
			return nil, err
		}
		if pr.held <= skip {
			if buf, err = serialize.AppendKexecRecord(buf[:0], rec, dg, storeOrder); err != nil {
				return nil, err
			}
			vh.h.Write(buf)
			pr.retained++
			if pr.held == skip && vh.sum() != v.sum {
				return nil, fmt.Errorf("%w: the first %d records the kernel holds are not the %d records stored for boot %s after index %d", ErrStoreMismatch, skip, skip, d.ki.BootID, delPoint)
			}
			continue
		}
		if sw == nil {
			if sw, err = d.newSegment(v, source); err != nil {
				return nil, err
			}
		}
		if err := sw.add(rec); err != nil {
			sw.abort()
			return nil, err
		}
		if err := d.hook(StepWrite, sw.count); err != nil {
			sw.abort()
			return nil, err
		}
	}
	if pr.held < skip {
		return nil, fmt.Errorf("%w: the kernel holds %d records, the store expects at least %d of boot %s still held", ErrStoreMismatch, pr.held, skip, d.ki.BootID)
	}
	if sw != nil {
		seg, err := sw.commit(pr.held, pr.retained)
		if err != nil {
			return nil, err
		}
		pr.seg = seg
		pr.stored = seg.Count
	}
	return pr, nil
}

// segWriter writes one segment: temp file, records, header, fsync, rename, read-back.
type segWriter struct {
	d     *drainer
	v     bootView
	seg   Segment
	f     *os.File
	tmp   string
	bw    *bufio.Writer
	buf   []byte
	dg    *serialize.Digester
	bh    *bootHasher
	start string
	rp    *serialize.Replayer
	pa    *serialize.ParallelAdder // feeds rp, one goroutine per bank, while records are read and written
	count uint64
	size  uint64
}

func (d *drainer) newSegment(v bootView, source string) (*segWriter, error) {
	n := len(d.s.Segments()) + 1
	segs := d.s.ChainSegments()
	start := serialize.PCRValues{}
	var firstSeq uint64
	if len(segs) > 0 {
		var err error
		if start, err = decodePCRs(segs[len(segs)-1].PCRs); err != nil {
			return nil, &TamperError{File: manifestName, What: err.Error()}
		}
		firstSeq = segs[len(segs)-1].End()
	}
	scheme, _ := serialize.ParseScheme(d.ki.Scheme())
	rp, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: d.banks, Scheme: scheme, Order: storeOrder, Start: start, DigestBank: &serialize.SHA1})
	if err != nil {
		return nil, err
	}
	// The boot hash continues from the end of this boot's last stored segment.
	var st string
	for _, b := range v.bounds {
		if b.at == v.stored {
			st = b.state
		}
	}
	bh, err := newBootHasher(st)
	if err != nil {
		return nil, err
	}
	final := segmentName(n)
	tmp := filepath.Join(d.s.dir, segmentsDir, "."+filepath.Base(final)+".tmp")
	_ = os.Remove(tmp)
	f, err := openNoFollow(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, fileMode)
	if err != nil {
		return nil, fmt.Errorf("store: create segment: %w", err)
	}
	sw := &segWriter{d: d, v: v, f: f, tmp: tmp, bw: bufio.NewWriterSize(f, 1<<20), dg: serialize.NewDigester(), bh: bh, start: st, rp: rp, pa: rp.Parallel(), size: serialize.KexecHeaderSize}
	sw.seg = Segment{
		Number: n, File: final, FirstSeq: firstSeq, Source: source, Backend: d.res.Backend,
		Boot:        BootInfo{BootID: d.ki.BootID, Generation: d.gen, KernelRelease: d.ki.Release, FirstIndex: v.stored},
		IMAHash:     d.ki.IMAHash(),
		KernelBanks: d.k.Banks,
		Scheme:      d.ki.Scheme(),
		ByteOrder:   "little",
		FlushHtable: d.ki.FlushHtable(),
		TPM:         d.clock,
	}
	if _, err := sw.bw.Write(serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: serialize.KexecVersion}, storeOrder)); err != nil {
		sw.abort()
		return nil, fmt.Errorf("store: write segment: %w", err)
	}
	return sw, nil
}

func (sw *segWriter) add(rec *serialize.Record) error {
	var err error
	if sw.buf, err = serialize.AppendKexecRecord(sw.buf[:0], rec, sw.dg, storeOrder); err != nil {
		return err
	}
	if _, err := sw.bw.Write(sw.buf); err != nil {
		return fmt.Errorf("store: write segment: %w", err)
	}
	sw.bh.h.Write(sw.buf)
	if err := sw.pa.Add(rec); err != nil {
		return fmt.Errorf("replay kernel records (record numbers from index %d of this boot's list): %w", sw.v.stored, err)
	}
	sw.count++
	sw.size += uint64(len(sw.buf))
	return nil
}

func (sw *segWriter) abort() {
	sw.pa.Close()
	if sw.f != nil {
		sw.f.Close()
		sw.f = nil
	}
	os.Remove(sw.tmp)
}

// commit finishes the file durably, reads it back, and appends the manifest entry.
func (sw *segWriter) commit(held, retained uint64) (*Segment, error) {
	d := sw.d
	fail := func(err error) (*Segment, error) { sw.abort(); return nil, err }
	if err := sw.pa.Close(); err != nil {
		return fail(fmt.Errorf("replay kernel records (record numbers from index %d of this boot's list): %w", sw.v.stored, err))
	}
	if err := sw.bw.Flush(); err != nil {
		return fail(fmt.Errorf("store: write segment: %w", err))
	}
	hdr := serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: serialize.KexecVersion, BufferSize: sw.size, Count: sw.count}, storeOrder)
	if _, err := sw.f.WriteAt(hdr, 0); err != nil {
		return fail(fmt.Errorf("store: write segment header: %w", err))
	}
	if err := d.hook(StepSegmentWritten, sw.count); err != nil {
		return fail(err)
	}
	if err := sw.f.Sync(); err != nil {
		return fail(fmt.Errorf("store: fsync segment: %w", err))
	}
	final := filepath.Join(d.s.dir, sw.seg.File)
	if err := os.Rename(sw.tmp, final); err != nil {
		return fail(fmt.Errorf("store: rename segment: %w", err))
	}
	// The descriptor stays open for the read-back: opening the file again for reading
	// would be a FILE_CHECK measurement under common policies, a record in the kernel's
	// list after it was read (in the kexec window, for the last drain before a kexec).
	f := sw.f
	sw.f = nil
	defer f.Close()
	if err := syncDir(filepath.Join(d.s.dir, segmentsDir)); err != nil {
		os.Remove(final)
		return nil, err
	}
	if err := d.hook(StepSegmentSynced, sw.count); err != nil {
		return nil, err
	}
	sw.seg.Count = sw.count
	sw.seg.Size = int64(sw.size)
	sw.seg.BootHash = sw.bh.state()
	sw.seg.BootSum = sw.bh.sum()
	sw.seg.PCRs = pcrsJSON(sw.rp.State())
	sw.seg.Held = held
	sw.seg.Retained = retained
	sum, err := sw.readBack(f, final)
	if err == nil {
		if err = f.Close(); err != nil {
			err = fmt.Errorf("store: close segment: %w", err)
		}
	}
	if err != nil {
		os.Remove(final)
		return nil, err
	}
	sw.seg.SHA256 = sum
	seg := sw.seg
	if err := d.s.appendEntries([]Entry{{Type: EntrySegment, Segment: &seg}}, func() error { return d.hook(StepManifestWritten, seg.Count) }); err != nil {
		return nil, err
	}
	if err := d.hook(StepManifestSynced, seg.Count); err != nil {
		return nil, err
	}
	d.res.Segments = append(d.res.Segments, seg)
	return &seg, nil
}

// readBack reads the fsynced segment again, through the descriptor it was written with,
// and checks it holds exactly what was written: the header written, and record bytes that
// continue the boot hash to the same sum as the bytes written (SHA-256: equal sums mean
// equal bytes, so re-parsing would add nothing); and that name is that file. It returns
// the file's SHA-256, and keeps the bytes for DrainResult.Written when asked to.
func (sw *segWriter) readBack(f *os.File, name string) (string, error) {
	fail := func(err error) (string, error) {
		return "", fmt.Errorf("store: read back segment %s: %w", sw.seg.File, err)
	}
	bad := func(what string) error {
		return fmt.Errorf("store: read back segment %s: %s; nothing was deleted", sw.seg.File, what)
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if ni, err := os.Lstat(name); err != nil || !os.SameFile(fi, ni) {
		return "", bad("the name does not refer to the file written")
	}
	if uint64(fi.Size()) != sw.size {
		return "", bad(fmt.Sprintf("it has %d bytes, %d were written", fi.Size(), sw.size))
	}
	hdr := make([]byte, serialize.KexecHeaderSize)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return fail(err)
	}
	h, err := serialize.ParseKexecHeader(hdr, storeOrder)
	if err != nil || h.Count != sw.count || h.BufferSize != sw.size {
		return "", bad(fmt.Sprintf("its header does not describe the %d records (%d bytes) written", sw.count, sw.size))
	}
	bh, err := newBootHasher(sw.start)
	if err != nil {
		return "", err
	}
	fh := sha256.New()
	fh.Write(hdr)
	body := io.NewSectionReader(f, serialize.KexecHeaderSize, int64(sw.size)-serialize.KexecHeaderSize)
	var kept []byte
	if sw.d.keep.wants(int64(sw.size)) {
		kept = make([]byte, sw.size)
		copy(kept, hdr)
		if _, err := io.ReadFull(body, kept[len(hdr):]); err != nil {
			return fail(err)
		}
		body = io.NewSectionReader(bytes.NewReader(kept), serialize.KexecHeaderSize, int64(len(kept))-serialize.KexecHeaderSize)
	}
	n, err := hashBoth(body, fh, bh.h)
	if err != nil {
		return fail(err)
	}
	if uint64(n)+serialize.KexecHeaderSize != sw.size || bh.sum() != sw.seg.BootSum {
		return "", bad(fmt.Sprintf("it does not hold the %d records written", sw.count))
	}
	if kept != nil {
		sw.d.keep.add(WrittenFile{Name: sw.seg.File, Data: kept})
	}
	return hex.EncodeToString(fh.Sum(nil)), nil
}

// hashBoth writes everything r yields to a and b, b in a second goroutine, chunk by
// chunk. It returns the bytes read.
func hashBoth(r io.Reader, a, b hash.Hash) (int64, error) {
	const size = 1 << 20
	bufs := [2][]byte{make([]byte, size), make([]byte, size)}
	var total int64
	done := make(chan struct{}, 1)
	done <- struct{}{}
	for i := 0; ; i ^= 1 {
		n, err := io.ReadFull(r, bufs[i])
		chunk := bufs[i][:n]
		<-done // b has finished the previous chunk, whose buffer is read into next
		if n > 0 {
			total += int64(n)
			go func() { b.Write(chunk); done <- struct{}{} }()
			a.Write(chunk)
		} else {
			done <- struct{}{}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			<-done
			return total, nil
		}
		if err != nil {
			<-done
			return total, err
		}
	}
}

// appendDeletion records that the kernel no longer holds this boot's records before through.
func (d *drainer) appendDeletion(through uint64, carried, resolved bool) error {
	return d.s.appendEntries([]Entry{{Type: EntryDeleted, Deleted: &Deletion{
		BootID: d.ki.BootID, Through: through, Method: d.res.Backend, Carried: carried, Resolved: resolved,
	}}}, nil)
}

// deletedCarried is BootState.DeletedBy's key for records carried after ESTALE.
const deletedCarried = "carried"

// carried records that a delete met ESTALE: kexec is under way and the next kernel carries
// this boot's records before through (7.2 carries staged and current records; spec
// §12.3). A repeated refusal adds no entry.
func (d *drainer) carried(through uint64) error {
	d.res.Carried = true
	if bs := d.s.Boot(d.ki.BootID); bs != nil && bs.Deleted >= through {
		return nil
	}
	return d.appendDeletion(through, true, false)
}

// settle records a deletion point found by resolve when it is past the confirmed one.
func (d *drainer) settle(v bootView, delPoint uint64) error {
	if delPoint <= v.deleted {
		return nil
	}
	d.res.Resolved += delPoint - v.deleted
	return d.appendDeletion(delPoint, false, true)
}

// drainList is the delete-n and snapshot backend: read the original SHA1 list, persist,
// and (delete-n) write "N\n" to it, all on one O_RDWR file descriptor.
func (d *drainer) drainList(ctx context.Context, del bool) error {
	flag := os.O_RDONLY
	if del {
		flag = os.O_RDWR
	}
	f, err := d.k.openKernel(ctx, d.k.List, flag)
	if err != nil {
		return fmt.Errorf("open measurement list: %w", err)
	}
	defer f.Close()
	open := func() (serialize.Source, error) { return listReader(f) }
	v := d.view()
	var delPoint uint64
	if del {
		if delPoint, err = d.resolve(v, open, nil); err != nil {
			return err
		}
	} else {
		// Nothing is deleted by a snapshot: the kernel holds everything after the
		// confirmed deletion point.
		delPoint = v.deleted
	}
	if err := d.settle(v, delPoint); err != nil {
		return err
	}
	v.deleted = delPoint
	source := SourceSnapshot
	if del {
		source = SourceDeletedN
	}
	pr, err := d.pass(v, delPoint, open, source)
	if err != nil {
		return err
	}
	d.res.Held, d.res.Retained, d.res.Stored = pr.held, pr.retained, pr.stored
	if !del || pr.held == 0 {
		return nil
	}
	if !pr.anyReal {
		// Delete only ranges with a non-violation record: such a record can never appear
		// again in this boot (the hash table keeps its digest; N refuses ima_flush_htable),
		// which is what makes the next run's comparison exact after a crash.
		return nil
	}
	if err := command(f, fmt.Sprintf("%d\n", pr.held)); err != nil {
		if errors.Is(err, unix.ESTALE) {
			return d.carried(delPoint + pr.held)
		}
		return fmt.Errorf("delete %d records (stored and durable; the next drain retries): %w", pr.held, err)
	}
	if err := d.hook(StepDeleted, pr.held); err != nil {
		return err
	}
	d.res.Deleted += pr.held
	return d.appendDeletion(delPoint+pr.held, false, false)
}

// drainTrim is the trim-log backend: T from ima_trim_log is the exact deletion point.
func (d *drainer) drainTrim(ctx context.Context) error {
	trimT, err := d.k.readTrimCount(ctx)
	if err != nil {
		return err
	}
	t := trimT
	v := d.view()
	// T counts only what ima_trim_log trimmed; add what other backends deleted this boot.
	if bs := d.s.Boot(d.ki.BootID); bs != nil {
		for m, n := range bs.DeletedBy {
			if m != BackendTrimLog && m != deletedCarried {
				t += n
			}
		}
	}
	delPoint, err := d.resolve(v, nil, &t)
	if err != nil {
		return err
	}
	if err := d.settle(v, delPoint); err != nil {
		return err
	}
	v.deleted = delPoint
	f, err := d.k.openKernel(ctx, d.k.List, os.O_RDONLY)
	if err != nil {
		return fmt.Errorf("open measurement list: %w", err)
	}
	pr, err := d.pass(v, delPoint, func() (serialize.Source, error) { return listReader(f) }, SourceTrimmed)
	f.Close()
	if err != nil {
		return err
	}
	d.res.Held, d.res.Retained, d.res.Stored = pr.held, pr.retained, pr.stored
	if pr.held == 0 {
		return nil
	}
	tf, err := d.k.openKernel(ctx, d.k.TrimLog, os.O_WRONLY)
	if err != nil {
		return fmt.Errorf("open ima_trim_log: %w", err)
	}
	defer tf.Close()
	if err := command(tf, fmt.Sprintf("%d:%d\n", trimT, pr.held)); err != nil {
		return fmt.Errorf("trim %d records (stored and durable; the next drain retries): %w", pr.held, err)
	}
	if err := d.hook(StepDeleted, pr.held); err != nil {
		return err
	}
	d.res.Deleted += pr.held
	return d.appendDeletion(delPoint+pr.held, false, false)
}

// drainStaged is the staged backend (7.2): on one O_RDWR fd of the SHA1 staged list, A
// stages the whole current list, the staged records are read and persisted, then D frees
// them. Records left staged by an interrupted run make A fail with EEXIST; they are
// finished first (persist what the store lacks, then D), then a new round starts.
func (d *drainer) drainStaged(ctx context.Context) error {
	f, err := d.k.openKernel(ctx, d.k.Staged, os.O_RDWR)
	if err != nil {
		return fmt.Errorf("open staged list: %w", err)
	}
	defer f.Close()
	open := func() (serialize.Source, error) { return listReader(f) }
	for round := 0; round < 2; round++ {
		err := command(f, "A\n")
		leftover := false
		switch {
		case err == nil:
			if err := d.hook(StepStaged, 0); err != nil {
				return err
			}
		case errors.Is(err, unix.EEXIST):
			leftover = true
		case errors.Is(err, unix.ENOENT):
			// The current list is empty; something may still be staged.
			leftover = true
		case errors.Is(err, unix.EACCES):
			// Nothing is lost: the kernel carries what it holds (staged first) to the
			// next kernel, whose drain stores it.
			return fmt.Errorf("%w: %w; the kernel carries the records it holds to the next kernel: drain again after the kexec", ErrSuspended, err)
		default:
			return fmt.Errorf("stage records: %w", err)
		}
		v := d.view()
		var delPoint uint64
		empty := false
		if leftover {
			src, err := open()
			if err != nil {
				return err
			}
			if _, err := src.Next(); errors.Is(err, io.EOF) {
				empty = true
			} else if err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("read staged list: %w", err)
			} else if errors.Is(err, unix.ENOENT) {
				empty = true // RFC v1 returned ENOENT for an empty staged list
			}
		}
		stagedGone := (!leftover || empty) && v.lastSource == SourceStaged && v.stored > v.deleted
		if stagedGone {
			// Nothing is staged, so the staged records the store holds were freed by a D
			// whose manifest entry was lost.
			t := v.stored
			if delPoint, err = d.resolve(v, open, &t); err != nil {
				return err
			}
		} else if !(leftover && empty) {
			if delPoint, err = d.resolve(v, open, nil); err != nil {
				return err
			}
		} else {
			delPoint = v.deleted
		}
		if err := d.settle(v, delPoint); err != nil {
			return err
		}
		v.deleted = delPoint
		if leftover && empty {
			return nil // nothing staged, nothing to stage
		}
		pr, err := d.pass(v, delPoint, open, SourceStaged)
		if err != nil {
			return err
		}
		d.res.Held += pr.held
		d.res.Retained += pr.retained
		d.res.Stored += pr.stored
		if pr.held > 0 {
			if err := command(f, "D\n"); err != nil {
				if errors.Is(err, unix.ESTALE) {
					return d.carried(delPoint + pr.held)
				}
				return fmt.Errorf("delete staged records (stored and durable; the next drain finishes): %w", err)
			}
			if err := d.hook(StepDeleted, pr.held); err != nil {
				return err
			}
			d.res.Deleted += pr.held
			if err := d.appendDeletion(delPoint+pr.held, false, false); err != nil {
				return err
			}
		}
		if !leftover {
			return nil
		}
	}
	return nil
}

// String renders a short human summary.
func (r *DrainResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "backend %s: read %d, stored %d new", r.Backend, r.Held, r.Stored)
	if r.Retained > 0 {
		fmt.Fprintf(&b, " (%d already stored)", r.Retained)
	}
	fmt.Fprintf(&b, ", kernel deleted %d; chain %d records", r.Deleted, r.Chain)
	if r.Resolved > 0 {
		fmt.Fprintf(&b, "; confirmed %d deletions of an interrupted drain", r.Resolved)
	}
	if r.Carried {
		b.WriteString("; delete refused with ESTALE: kexec under way, the next kernel carries the records this one still holds")
	}
	if r.Archived != "" {
		fmt.Fprintf(&b, "; archived the store of an earlier power cycle to %s", r.Archived)
	}
	return b.String()
}
