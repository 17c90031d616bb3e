package handover

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/imakexec/imakexec/serialize"
	"golang.org/x/sys/unix"
)

// Writing the store: a new manifest, appended entries, the cold-boot archive, temp-file cleanup,
// and the manifest's encodings of PCR values and boot hashes.

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
	segs, err := s.root.Sub(segmentsDir, true, dirMode)
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	segs.Close()
	if err := s.root.WriteFileAtomic(manifestName, append(line, '\n'), fileMode); err != nil {
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
	f, err := s.root.Open(manifestName, unix.O_WRONLY|unix.O_NONBLOCK, 0)
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
	// Every step is relative to the store's descriptor (mkdirat, renameat), so a symlink
	// put in place of archive/ or of the new directory is never followed.
	arch, err := s.root.Sub(archiveDir, true, dirMode)
	if err != nil {
		return "", fmt.Errorf("store: archive: %w", err)
	}
	defer arch.Close()
	base := fmt.Sprintf("%s-%s", time.Now().UTC().Format("20060102T150405Z"), sanitize(reason))
	name := base
	for i := 1; ; i++ {
		if _, err := arch.Lstat(name); errors.Is(err, os.ErrNotExist) {
			break
		}
		name = base + "." + strconv.Itoa(i)
	}
	if err := arch.Mkdir(name, dirMode); err != nil {
		return "", fmt.Errorf("store: archive: %w", err)
	}
	dst, err := arch.Sub(name, false, 0)
	if err != nil {
		return "", fmt.Errorf("store: archive: %w", err)
	}
	defer dst.Close()
	// Segments first, manifest last: a crash in between leaves no manifest pointing at
	// missing files in the live store... the live manifest is moved last.
	for _, n := range []string{segmentsDir, manifestName} {
		if err := s.root.Rename(n, dst, n); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("store: archive: %w", err)
		}
	}
	if err := dst.Sync(); err != nil {
		return "", err
	}
	// archive/ holds the new directory's entry: without this fsync a crash could lose it
	// with the segments and manifest renamed into it.
	if err := arch.Sync(); err != nil {
		return "", err
	}
	if err := s.root.Sync(); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, archiveDir, name), s.load()
}

// archiveIfOtherCycle is the one cold-boot step of drain and rejoin: a store made in another
// TPM power cycle (its resetCount differs from the TPM's) is archived, never joined. It
// returns the archive path, "" when the store is of this power cycle or empty.
func (s *Store) archiveIfOtherCycle(resetCount uint32) (string, error) {
	h := s.Header()
	if h == nil || h.TPM.ResetCount == resetCount {
		return "", nil
	}
	dst, err := s.Archive(fmt.Sprintf("tpm-reset-%d", h.TPM.ResetCount))
	if err != nil {
		return "", fmt.Errorf("archive store of TPM resetCount %d: %w", h.TPM.ResetCount, err)
	}
	return dst, nil
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
	if s.mustLock() != nil {
		return
	}
	segs, err := s.root.Sub(segmentsDir, false, 0)
	if err != nil {
		return
	}
	defer segs.Close()
	ents, err := segs.Names()
	if err != nil {
		return
	}
	known := map[string]bool{}
	for _, sg := range s.Segments() {
		known[filepath.Base(sg.File)] = true
	}
	next := len(s.Segments()) + 1
	for _, n := range ents {
		switch {
		case strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".tmp"):
			_ = segs.Remove(n)
		case !known[n] && n == filepath.Base(segmentName(next)):
			_ = segs.Remove(n)
		}
	}
}

// pcrsJSON and decodePCRs convert PCR values to and from the manifest's hex form,
// {"10":{"sha1":"…","sha256":"…"}} (encoding/json sorts the keys).
func pcrsJSON(v serialize.PCRValues) json.RawMessage {
	out := map[string]map[string]string{}
	for p, m := range v {
		k := strconv.Itoa(int(p))
		out[k] = map[string]string{}
		for b, d := range m {
			out[k][b] = hex.EncodeToString(d)
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		panic(err) // maps of strings always marshal
	}
	return b
}

func decodePCRs(raw json.RawMessage) (serialize.PCRValues, error) {
	var m map[string]map[string]string
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, fmt.Errorf("PCR values: %w", err)
		}
	}
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
