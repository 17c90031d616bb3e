package handover

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/imakexec/imakexec/internal/storefs"
	"github.com/imakexec/imakexec/serialize"
	"golang.org/x/sys/unix"
)

// The one writer of segment files: temp file, records, header, fsync, rename, read back.

// segWriter writes one segment: temp file, records, header, fsync, rename, read-back,
// manifest entry. Drain streams the kernel's records through it; rejoin writes its small
// carried, reconstructed and duplicate segments with it (Store.writeSegment).
type segWriter struct {
	s     *Store
	seg   Segment
	f     *os.File
	dir   *storefs.Dir // segments/, opened below the store's descriptor
	tmp   string       // the temp file's name in dir
	bw    *bufio.Writer
	buf   []byte
	dg    *serialize.Digester
	bh    *bootHasher
	start string
	rp    *serialize.Replayer      // nil for a duplicate segment (not in the chain)
	pa    *serialize.ParallelAdder // feeds rp, one goroutine per bank, while records are written
	count uint64
	size  uint64
	what  string // names the records in replay errors
	hook  func(Step, uint64) error
	keep  *keeper
	banks []serialize.Bank // the header's banks, in which the segment's PCR values are recorded
}

// segOptions are what a segment writer needs besides the segment's metadata.
type segOptions struct {
	// BootStart is the boot hash state before the segment's first record.
	BootStart string
	// Replay continues the chain's replay through the segment (nil for a duplicate
	// segment, whose PCRs are DupPCRs).
	Replay  *serialize.Replayer
	DupPCRs serialize.PCRValues
	// What names the records in errors ("kernel records from index 5 of this boot's list").
	What string
	// Hook is drain's fault-injection hook (nil: none); Keep collects the bytes written.
	Hook func(Step, uint64) error
	Keep *keeper
}

// newSegWriter starts segment meta (Number, File, Count, Size, hashes and PCRs are filled
// in here) as a temp file in segments/.
func (s *Store) newSegWriter(meta Segment, o segOptions) (*segWriter, error) {
	meta.Number = len(s.Segments()) + 1
	meta.File = segmentName(meta.Number)
	bh, err := newBootHasher(o.BootStart)
	if err != nil {
		return nil, err
	}
	banks, err := headerBanks(s.Header())
	if err != nil {
		return nil, err
	}
	if err := s.mustLock(); err != nil {
		return nil, err
	}
	// The temp file is created, renamed and removed relative to segments/'s descriptor,
	// itself opened from the store's (no symlink followed at any level).
	dir, err := s.root.Sub(segmentsDir, false, 0)
	if err != nil {
		return nil, fmt.Errorf("store: create segment: %w", err)
	}
	tmp := "." + filepath.Base(meta.File) + ".tmp"
	_ = dir.Remove(tmp)
	f, err := dir.Create(tmp, unix.O_RDWR, fileMode)
	if err != nil {
		dir.Close()
		return nil, fmt.Errorf("store: create segment: %w", err)
	}
	sw := &segWriter{s: s, seg: meta, f: f, dir: dir, tmp: tmp, bw: bufio.NewWriterSize(f, 1<<20), dg: serialize.NewDigester(), bh: bh,
		start: o.BootStart, rp: o.Replay, size: serialize.KexecHeaderSize, what: o.What, hook: o.Hook, keep: o.Keep, banks: banks}
	if sw.rp != nil {
		sw.pa = sw.rp.Parallel()
	} else {
		sw.seg.PCRs = pcrsJSON(onlyBanks(o.DupPCRs, sw.banks))
	}
	if sw.what == "" {
		sw.what = "the " + string(meta.Source) + " segment's records"
	}
	if _, err := sw.bw.Write(serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: serialize.KexecVersion}, storeOrder)); err != nil {
		sw.abort()
		return nil, fmt.Errorf("store: write segment: %w", err)
	}
	return sw, nil
}

func (d *drainer) newSegment(v bootView, source Source) (*segWriter, error) {
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
	rp, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: d.banks, Scheme: d.ki.Scheme(), Order: storeOrder, Start: start, DigestBank: &serialize.SHA1})
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
	meta := Segment{
		FirstSeq: firstSeq, Source: source, Backend: d.res.Backend,
		Boot:        BootInfo{BootID: d.ki.BootID, Generation: d.gen, KernelRelease: d.ki.Release, FirstIndex: v.stored},
		IMAHash:     d.ki.IMAHash(),
		KernelBanks: d.k.Banks,
		Scheme:      schemeOf(d.ki.Scheme()),
		ByteOrder:   "little",
		FlushHtable: d.ki.FlushHtable(),
		TPM:         d.clock,
	}
	return d.s.newSegWriter(meta, segOptions{BootStart: st, Replay: rp, Hook: d.o.Hook, Keep: d.keep,
		What: fmt.Sprintf("kernel records (record numbers from index %d of this boot's list)", v.stored)})
}

// writeSegment stores recs, built in memory (rejoin's small segments), as a segment with
// the metadata of sg, through the one segment writer. bootStart is the boot hash state
// before recs; r (in-chain segments) replays them, dupPCRs is recorded for duplicates.
func (s *Store) writeSegment(sg Segment, recs []serialize.Record, bootStart string, r *serialize.Replayer, dupPCRs serialize.PCRValues) (*Segment, error) {
	sw, err := s.newSegWriter(sg, segOptions{BootStart: bootStart, Replay: r, DupPCRs: dupPCRs})
	if err != nil {
		return nil, err
	}
	for i := range recs {
		if err := sw.add(&recs[i]); err != nil {
			sw.abort()
			return nil, err
		}
	}
	return sw.commit(0, 0)
}

func (sw *segWriter) step(st Step, n uint64) error {
	if sw.hook == nil {
		return nil
	}
	if err := sw.hook(st, n); err != nil {
		return fmt.Errorf("drain interrupted at %s: %w", st, err)
	}
	return nil
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
	if sw.pa != nil {
		if err := sw.pa.Add(rec); err != nil {
			return fmt.Errorf("replay %s: %w", sw.what, err)
		}
	}
	sw.count++
	sw.size += uint64(len(sw.buf))
	return nil
}

func (sw *segWriter) abort() {
	if sw.pa != nil {
		sw.pa.Close()
	}
	if sw.f != nil {
		sw.f.Close()
		sw.f = nil
	}
	if sw.dir != nil {
		_ = sw.dir.Remove(sw.tmp)
		sw.closeDir()
	}
}

func (sw *segWriter) closeDir() {
	if sw.dir != nil {
		sw.dir.Close()
		sw.dir = nil
	}
}

// commit finishes the file durably, reads it back, and appends the manifest entry.
func (sw *segWriter) commit(held, retained uint64) (*Segment, error) {
	s := sw.s
	fail := func(err error) (*Segment, error) { sw.abort(); return nil, err }
	defer sw.closeDir()
	if sw.pa != nil {
		if err := sw.pa.Close(); err != nil {
			return fail(fmt.Errorf("replay %s: %w", sw.what, err))
		}
	}
	if err := sw.bw.Flush(); err != nil {
		return fail(fmt.Errorf("store: write segment: %w", err))
	}
	hdr := serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: serialize.KexecVersion, BufferSize: sw.size, Count: sw.count}, storeOrder)
	if _, err := sw.f.WriteAt(hdr, 0); err != nil {
		return fail(fmt.Errorf("store: write segment header: %w", err))
	}
	if err := sw.step(StepSegmentWritten, sw.count); err != nil {
		return fail(err)
	}
	if err := sw.f.Sync(); err != nil {
		return fail(fmt.Errorf("store: fsync segment: %w", err))
	}
	final := filepath.Base(sw.seg.File)
	if err := sw.dir.Rename(sw.tmp, sw.dir, final); err != nil {
		return fail(fmt.Errorf("store: rename segment: %w", err))
	}
	// The descriptor stays open for the read-back: opening the file again for reading
	// would be a FILE_CHECK measurement under common policies, a record in the kernel's
	// list after it was read (in the kexec window, for the last drain before a kexec).
	f := sw.f
	sw.f = nil
	defer f.Close()
	if err := sw.dir.Sync(); err != nil {
		_ = sw.dir.Remove(final)
		return nil, err
	}
	if err := sw.step(StepSegmentSynced, sw.count); err != nil {
		return nil, err
	}
	sw.seg.Count = sw.count
	sw.seg.Size = int64(sw.size)
	sw.seg.BootHash = sw.bh.state()
	sw.seg.BootSum = sw.bh.sum()
	if sw.rp != nil {
		// The recorded values are in the header's banks (a hint for status and for the
		// next join; a verdict compares the TPM's banks, see trust.go).
		sw.seg.PCRs = pcrsJSON(onlyBanks(sw.rp.State(), sw.banks))
	}
	sw.seg.Held = held
	sw.seg.Retained = retained
	sum, err := sw.readBack(f, final)
	if err == nil {
		if err = f.Close(); err != nil {
			err = fmt.Errorf("store: close segment: %w", err)
		}
	}
	if err != nil {
		_ = sw.dir.Remove(final)
		return nil, err
	}
	sw.seg.SHA256 = sum
	seg := sw.seg
	if err := s.appendEntries([]Entry{{Type: EntrySegment, Segment: &seg}}, func() error { return sw.step(StepManifestWritten, seg.Count) }); err != nil {
		return nil, err
	}
	if err := sw.step(StepManifestSynced, seg.Count); err != nil {
		return nil, err
	}
	return &seg, nil
}

// readBack reads the fsynced segment again, through the descriptor it was written with,
// and checks it holds exactly what was written: the header written, and record bytes that
// continue the boot hash to the same sum as the bytes written (SHA-256: equal sums mean
// equal bytes, so re-parsing would add nothing); and that name is that file. It returns
// the file's SHA-256, and keeps the bytes for DrainResult.Written when asked to. name is
// the file's name in segments/ (sw.dir).
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
	fst, ok := fi.Sys().(*syscall.Stat_t)
	if nst, err := sw.dir.Lstat(name); err != nil || !ok || uint64(nst.Dev) != uint64(fst.Dev) || uint64(nst.Ino) != uint64(fst.Ino) {
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
	if sw.keep.wants(int64(sw.size)) {
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
		sw.keep.add(WrittenFile{Name: sw.seg.File, Data: kept})
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
