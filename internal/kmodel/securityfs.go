package kmodel

import (
	"bytes"
	"fmt"
	"strconv"
	"syscall"

	"github.com/imakexec/imakexec/serialize"
)

// FileKind is the kind of a securityfs file in integrity/ima/.
type FileKind int

// File kinds.
const (
	KindBinaryList FileKind = iota
	KindASCIIList
	KindCount      // runtime_measurements_count
	KindViolations // violations
	KindTrimLog    // ima_trim_log
	KindSymlink
)

// FileSpec is one entry of integrity/ima/ (ima_fs_init, create_securityfs_measurement_lists,
// 7.2; the trim-log file of the unmerged v5 series).
type FileSpec struct {
	Name   string
	Kind   FileKind
	Bank   serialize.Bank // list files
	Staged bool           // a _staged list file
	Mode   uint32         // permission bits
	Target string         // symlink target (relative)
}

// Files lists integrity/ima/ for the running kernel: before 6.10 the two legacy list files
// (SHA1); from 6.10 a binary and an ASCII file per TPM bank plus the legacy names as
// symlinks to the _sha1 files; 7.2 with staging adds _staged files and their symlinks;
// the trim profile adds ima_trim_log. List files are 0440, 0660 from 7.2.
func (k *Kernel) Files() []FileSpec {
	k.mu.Lock()
	defer k.mu.Unlock()
	listMode := uint32(0o440)
	if k.feat.Mediated {
		listMode = 0o660
	}
	var out []FileSpec
	if !k.feat.PerBankFiles {
		out = append(out,
			FileSpec{Name: "binary_runtime_measurements", Kind: KindBinaryList, Bank: serialize.SHA1, Mode: listMode},
			FileSpec{Name: "ascii_runtime_measurements", Kind: KindASCIIList, Bank: serialize.SHA1, Mode: listMode})
	} else {
		stagedSet := []bool{false}
		if k.feat.Staging {
			stagedSet = append(stagedSet, true)
		}
		banks := k.banks
		hasSHA1 := false
		for _, b := range banks {
			hasSHA1 = hasSHA1 || b.Name == "sha1"
		}
		if !hasSHA1 {
			banks = append(append([]serialize.Bank(nil), banks...), serialize.SHA1)
		}
		for _, staged := range stagedSet {
			suffix := ""
			if staged {
				suffix = "_staged"
			}
			name := func(b string) string { return b + suffix }
			if staged && k.cfg.StagingRFCv1 {
				name = func(b string) string { return "staged_" + b } // RFC v1: …_staged_<algo>
			}
			for _, b := range banks {
				out = append(out,
					FileSpec{Name: "ascii_runtime_measurements_" + name(b.Name), Kind: KindASCIIList, Bank: b, Staged: staged, Mode: listMode},
					FileSpec{Name: "binary_runtime_measurements_" + name(b.Name), Kind: KindBinaryList, Bank: b, Staged: staged, Mode: listMode})
			}
			out = append(out,
				FileSpec{Name: "binary_runtime_measurements" + suffix, Kind: KindSymlink, Target: "binary_runtime_measurements_" + name("sha1"), Mode: 0o777},
				FileSpec{Name: "ascii_runtime_measurements" + suffix, Kind: KindSymlink, Target: "ascii_runtime_measurements_" + name("sha1"), Mode: 0o777})
		}
	}
	if k.feat.TrimLog {
		out = append(out, FileSpec{Name: "ima_trim_log", Kind: KindTrimLog, Mode: 0o660})
	}
	out = append(out,
		FileSpec{Name: "runtime_measurements_count", Kind: KindCount, Mode: 0o440},
		FileSpec{Name: "violations", Kind: KindViolations, Mode: 0o440})
	return out
}

// Lookup finds a file of integrity/ima/ by name.
func (k *Kernel) Lookup(name string) (FileSpec, bool) {
	for _, f := range k.Files() {
		if f.Name == name {
			return f, true
		}
	}
	return FileSpec{}, false
}

// Cred is the caller of a file operation. UID 0 stands for CAP_SYS_ADMIN (and
// CAP_DAC_OVERRIDE). TID is the calling thread: the kernel records the writer per task.
type Cred struct {
	UID, GID uint32
	TID      int
}

// Handle is an open file of integrity/ima/.
type Handle struct {
	k     *Kernel
	spec  FileSpec
	write bool // opened with FMODE_WRITE
	// mediated: the open took the ima_measure lock, released on Release.
	mediated bool
	gen      uint64
	opener   int
	// seq_file state: the next record index, bytes rendered but not yet read, and the
	// file offset they start at.
	pos     int
	pending []byte
	off     int64
	buf     bytes.Buffer
	bw      *serialize.BinaryWriter
	aw      *serialize.ASCIIWriter
}

// Open opens a file the way the kernel would for this caller (_ima_measurements_open, 7.2):
// permission bits first (DAC; uid 0 overrides), then the file's open rule. On 7.2 the
// list files share one reader/writer counter: a writer needs CAP_SYS_ADMIN (EPERM) and no
// other user (EBUSY); a reader fails with EBUSY while a writer holds the files, and with
// ENFILE past Config.MaxReaders; the writer's own thread may open again for write. Errors
// are syscall.Errno.
func (k *Kernel) Open(spec FileSpec, write, read bool, c Cred) (*Handle, error) {
	if spec.Kind == KindSymlink {
		return nil, syscall.ELOOP
	}
	if c.UID != 0 {
		perm := spec.Mode & 0o7
		if c.GID == 0 {
			perm = (spec.Mode >> 3) & 0o7
		}
		if (write && perm&0o2 == 0) || (read && perm&0o4 == 0) {
			return nil, syscall.EACCES
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	h := &Handle{k: k, spec: spec, write: write, gen: k.generation, opener: c.TID}
	switch spec.Kind {
	case KindBinaryList, KindASCIIList:
		if k.feat.Mediated {
			if write && c.UID != 0 {
				return nil, syscall.EPERM
			}
			if err := k.measureLock(write, c.TID); err != nil {
				return nil, err
			}
			h.mediated = true
		}
	case KindTrimLog:
		if !write && c.UID == 0 {
			break
		}
		if c.UID != 0 {
			return nil, syscall.EPERM
		}
		if err := k.measureLock(write, c.TID); err != nil {
			return nil, err
		}
		h.mediated = true
	}
	return h, nil
}

// measureLock is ima_measure_lock (ima_fs.c, 7.2): ENFILE past the reader bound, the
// writer's own task may open again for write, else EBUSY while a writer (for anyone) or a
// reader (for a writer) holds the files.
func (k *Kernel) measureLock(write bool, tid int) error {
	if !write && k.users >= k.cfg.MaxReaders {
		return syscall.ENFILE
	}
	if write && tid != 0 && tid == k.writer {
		k.writerExtra++
		return nil
	}
	if (write && k.users != 0) || (!write && k.users < 0) {
		return syscall.EBUSY
	}
	if write {
		k.users--
		k.writer = tid
	} else {
		k.users++
	}
	return nil
}

// measureUnlock is ima_measure_unlock: tid is the thread that releases the file.
func (k *Kernel) measureUnlock(write bool, tid int) {
	if write && tid != 0 && tid == k.writer && k.writerExtra != 0 {
		k.writerExtra--
		return
	}
	if write {
		k.users++
		k.writer = 0
	} else {
		k.users--
	}
}

// Release closes the handle; tid is the thread whose close() dropped the last reference.
func (h *Handle) Release(tid int) {
	k := h.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if h.mediated && h.gen == k.generation {
		k.measureUnlock(h.write, tid)
	}
	h.mediated = false
}

// Spec returns the file the handle is open on.
func (h *Handle) Spec() FileSpec { return h.spec }

// Read reads at off. List files behave as seq_files: reading at the offset where the last
// read ended continues with the next records of the live list; any other offset restarts
// from the first record and skips to it. Counters render "%li\n". After a kexec or cold
// boot, handles of the previous kernel fail with EIO.
func (h *Handle) Read(p []byte, off int64) (int, error) {
	k := h.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if h.gen != k.generation {
		return 0, syscall.EIO
	}
	switch h.spec.Kind {
	case KindCount:
		return simpleRead(p, off, strconv.FormatInt(k.counters().RuntimeMeasurementsCount, 10)+"\n"), nil
	case KindViolations:
		return simpleRead(p, off, strconv.FormatInt(k.violations, 10)+"\n"), nil
	case KindTrimLog:
		return simpleRead(p, off, strconv.FormatInt(k.trimTotal, 10)+"\n"), nil
	}
	if h.spec.Staged && k.cfg.StagingRFCv1 && len(k.staged) == 0 {
		return 0, syscall.ENOENT // RFC v1: nothing staged
	}
	if off != h.off {
		h.pos, h.pending, h.off = 0, nil, 0
	}
	n := 0
	for n < len(p) || h.off < off {
		if len(h.pending) == 0 {
			if !h.render(max(len(p)-n, 64<<10)) {
				break
			}
		}
		if h.off < off { // skip to the requested offset
			s := min(int64(len(h.pending)), off-h.off)
			h.pending = h.pending[s:]
			h.off += s
			continue
		}
		c := copy(p[n:], h.pending)
		h.pending = h.pending[c:]
		h.off += int64(c)
		n += c
	}
	return n, nil
}

// render formats the next records (at least want bytes, if there are records) into
// h.pending; it reports false at the end of the list. Called with k.mu held.
func (h *Handle) render(want int) bool {
	k := h.k
	list := k.cur
	if h.spec.Staged {
		list = k.staged
	}
	if h.pos >= len(list) {
		return false
	}
	h.buf.Reset()
	if h.bw == nil && h.aw == nil {
		if h.spec.Kind == KindBinaryList {
			h.bw = serialize.NewBinaryWriter(&h.buf, le, h.spec.Bank, k.dg)
		} else {
			h.aw = serialize.NewASCIIWriter(&h.buf, le, h.spec.Bank, k.dg)
		}
	}
	for h.pos < len(list) && h.buf.Len() < want {
		r := list[h.pos].record()
		var err error
		if h.bw != nil {
			err = h.bw.Write(&r)
			if err == nil {
				err = h.bw.Flush()
			}
		} else {
			err = h.aw.Write(&r)
			if err == nil {
				err = h.aw.Flush()
			}
		}
		if err != nil {
			panic(fmt.Sprintf("kmodel: render record %d: %v", h.pos, err))
		}
		h.pos++
	}
	h.pending = append(h.pending[:0], h.buf.Bytes()...)
	return true
}

func simpleRead(p []byte, off int64, s string) int {
	if off >= int64(len(s)) {
		return 0
	}
	return copy(p, s[off:])
}

// Write handles a write(2) of p (the file offset is ignored, as the kernel does).
func (h *Handle) Write(p []byte) (int, error) {
	k := h.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if h.gen != k.generation {
		return 0, syscall.EIO
	}
	if !h.write {
		return 0, syscall.EBADF
	}
	switch h.spec.Kind {
	case KindBinaryList, KindASCIIList:
		if !k.feat.Mediated {
			return 0, syscall.EINVAL // no write operation before 7.2
		}
		if err := k.listWrite(p, h.spec.Staged); err != nil {
			return 0, err
		}
		return len(p), nil
	case KindTrimLog:
		if err := k.trimWrite(p); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return 0, syscall.EINVAL
}

// stagedReqLength is STAGED_REQ_LENGTH (ima_fs.c, 7.2), the longest request.
const stagedReqLength = 21

// listWrite is _ima_measurements_write (7.2): length 2..STAGED_REQ_LENGTH, a final newline,
// then A or D on a staged file, or N (kstrtoul base 10, at least 1) on an original file
// unless ima_flush_htable is in effect.
func (k *Kernel) listWrite(p []byte, staged bool) error {
	if len(p) < 2 || len(p) > stagedReqLength {
		return syscall.EINVAL
	}
	if p[len(p)-1] != '\n' {
		return syscall.EINVAL
	}
	req := string(p[:len(p)-1])
	switch req[0] {
	case 'A':
		if len(p) != 2 || !staged {
			return syscall.EINVAL
		}
		return k.stage()
	case 'D':
		if len(p) != 2 || !staged {
			return syscall.EINVAL
		}
		return k.deleteStaged()
	}
	if staged {
		return syscall.EINVAL
	}
	if k.flushHTable() {
		return syscall.EINVAL
	}
	n, err := kstrtoul(req, 10)
	if err != nil {
		return err
	}
	if n == 0 {
		return syscall.EINVAL
	}
	return k.deletePartial(n)
}

// kstrtoul parses like the kernel's kstrtoul: an optional '+', digits in base (base 0:
// 0x/0 prefixes), one optional trailing newline; -EINVAL for anything else, -ERANGE on
// overflow.
func kstrtoul(s string, base int) (uint64, error) {
	if len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[0] == '+' {
		s = s[1:]
	}
	if s == "" {
		return 0, syscall.EINVAL
	}
	for _, c := range s {
		if base == 10 && (c < '0' || c > '9') {
			return 0, syscall.EINVAL
		}
	}
	n, err := strconv.ParseUint(s, base, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return 0, syscall.ERANGE
		}
		return 0, syscall.EINVAL
	}
	return n, nil
}

// stage is 'A' (ima_queue_stage, 7.2): EEXIST when something is staged, then ENOENT when
// the current list is empty, and only then EACCES when measurement is suspended; the
// checks run in this order under ima_extend_list_mutex.
func (k *Kernel) stage() error {
	switch {
	case len(k.staged) > 0:
		return syscall.EEXIST
	case len(k.cur) == 0:
		return syscall.ENOENT
	case k.suspended:
		return syscall.EACCES
	}
	k.staged, k.cur = k.cur, nil
	return nil
}

// deleteStaged is 'D' (ima_queue_staged_delete_all, 7.2): ENOENT when nothing is staged
// before ESTALE when measurement is suspended. With ima_flush_htable the hash table is
// replaced by an empty one.
func (k *Kernel) deleteStaged() error {
	switch {
	case len(k.staged) == 0:
		return syscall.ENOENT
	case k.suspended:
		return syscall.ESTALE
	}
	k.staged = nil
	if k.flushHTable() {
		k.htable = map[htKey]struct{}{}
	}
	return nil
}

// deletePartial is 'N' on an original file (ima_queue_delete_partial, 7.2): the list is
// walked for N records before the mutex is taken, so "fewer than N" (ENOENT) wins over
// "suspended" (ESTALE). The deleted records' digests stay in the hash table.
func (k *Kernel) deletePartial(n uint64) error {
	switch {
	case n > uint64(len(k.cur)):
		return syscall.ENOENT
	case k.suspended:
		return syscall.ESTALE
	}
	k.dropFront(int(n))
	return nil
}

// flushHTable is ima_flush_htable as the kernel keeps it: ima_flush_htable_setup ignores
// the boot parameter (with a warning) under CONFIG_IMA_DISABLE_HTABLE.
func (k *Kernel) flushHTable() bool { return k.cfg.FlushHTable && !k.cfg.DisableHTable }

// dropFront removes the first n current records; their digests stay in the hash table.
func (k *Kernel) dropFront(n int) {
	rest := make([]entry, len(k.cur)-n, max(len(k.cur)-n, 16))
	copy(rest, k.cur[n:])
	k.cur = rest
}

// trimWrite is ima_log_trim_write of the v5 trim series: "T:N", where T must equal the
// total trimmed so far and N (kstrtoul base 0) records are then removed from the front of
// the list (ENOENT when there are fewer); T grows by N. The hash table keeps the digests.
func (k *Kernel) trimWrite(p []byte) error {
	if len(p) < 2 || len(p) > 32 {
		return syscall.EINVAL
	}
	s := string(p)
	var t int64
	i := 0
	for ; i < len(s) && s[i] != ':' && s[i] != 0; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return syscall.EINVAL
		}
		d := int64(c - '0')
		if t > (1<<63-1-d)/10 {
			return syscall.ERANGE
		}
		t = t*10 + d
	}
	if i >= len(s) || s[i] != ':' {
		return syscall.EINVAL
	}
	if t != k.trimTotal {
		return syscall.EINVAL
	}
	n, err := kstrtoul(s[i+1:], 0)
	if err != nil {
		return err
	}
	if int64(n) <= 0 {
		k.lastTrimmed = 0
		return nil
	}
	if n > uint64(len(k.cur)) {
		return syscall.ENOENT
	}
	k.dropFront(int(n))
	k.trimTotal += int64(n)
	k.lastTrimmed = int64(n)
	return nil
}
