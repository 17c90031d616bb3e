package handover

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

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
	StoreDir string  // default DefaultStoreDir
	Backend  Backend // auto (default), staged, delete-n, trim-log, snapshot
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
	// be a FILE_CHECK measurement in the kexec window (docs/: the kexec window).
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
	Backend    Backend
	StoreDir   string
	Archived   string // set when a store of another power cycle was archived
	BootID     string
	Generation int
	Held       uint64 // records the kernel held when read (staged or current list)
	Retained   uint64 // of those, already in the store (left by a crash or a snapshot)
	Stored     uint64 // records newly persisted
	Deleted    uint64 // records the kernel deleted in this run
	Resolved   uint64 // deletions of an interrupted earlier run confirmed by this one
	// Suspended: measurement is suspended (A met EACCES or a delete ESTALE): what could be
	// read is stored, nothing more was deleted, and the kernel still holds the rest.
	// Whether the next kernel shows those records is for rejoin to find out.
	Suspended bool
	Segments  []Segment // segments written
	Chain     uint64    // records in the chain after the drain
	PCRs      serialize.PCRValues
	// Written holds the bytes the drain wrote, with DrainOptions.KeepWritten; nil when
	// they exceeded it.
	Written *Written
	// Note says why the backend is not the one the kernel's files suggest (ima_flush_htable
	// makes a writable list refuse N); "" otherwise.
	Note string
}

// Drain moves the kernel's measurement records into the store: read, persist (fsync, read
// back, manifest), and only then delete with the backend's command. It is idempotent and
// resumable: a run interrupted at any point is finished by the next one without losing or
// duplicating a record: no kernel record is deleted before its copy is durable and read back.
func Drain(ctx context.Context, o DrainOptions) (*DrainResult, error) {
	if o.TPM == nil {
		return nil, fmt.Errorf("%w: drain binds the store to the TPM power cycle and needs a TPM", ErrNoTPM)
	}
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	// 7.2 records the writer as the opening task (ima_measure_lock, measure_writer = current):
	// keep every open and close of the
	// kernel files on one OS thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	d := &drainer{o: o, ctx: ctx, res: &DrainResult{StoreDir: o.StoreDir}}
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
	d.res.Note = backendNote(d.k, d.ki, d.res.Backend)
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
	if d.res.Archived, err = d.s.archiveIfOtherCycle(reset); err != nil {
		return nil, err
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
	if len(d.s.ChainSegments()) == 0 {
		if err := startsPowerCycle(ctx, d.k, o.TPM, d.ki.Scheme()); err != nil {
			return nil, err
		}
	}
	switch d.res.Backend {
	case BackendStaged:
		err = d.drainStaged(ctx)
	case BackendDeleteN:
		err = d.drainList(ctx, listOptions{Delete: true})
	case BackendTrimLog:
		err = d.drainTrim(ctx)
	default:
		err = d.drainList(ctx, listOptions{})
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
	ctx   context.Context // polled while records are read; a cancelled drain deletes nothing
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
	var err error
	if d.banks, err = headerBanks(d.s.Header()); err != nil {
		return err
	}
	d.res.BootID = d.ki.BootID
	if _, ok := d.s.joined(d.ki.BootID); !ok {
		return notJoined(d.ki.BootID)
	}
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
	if r.Suspended {
		b.WriteString("; measurement suspended (reboot or kexec under way): nothing more deleted, the kernel still holds the rest; rejoin finds what the next kernel shows")
	}
	if r.Note != "" {
		b.WriteString("; " + r.Note)
	}
	if r.Archived != "" {
		fmt.Fprintf(&b, "; archived the store of an earlier power cycle to %s", r.Archived)
	}
	return b.String()
}
