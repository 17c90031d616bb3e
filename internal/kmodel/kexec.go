package kmodel

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/imakexec/imakexec/serialize"
)

// pageSize is the page size of the modelled machines.
const pageSize = 4096

// kexecImage is a loaded kexec image and its IMA segment.
type kexecImage struct {
	segSize int64  // IMA segment size; 0 when no segment was added
	buf     []byte // the segment content once the list was copied (at load before 6.16)
	copied  bool
	note    string
	cmdline string // the next kernel's /proc/cmdline
}

// File is a file given to kexec_file_load: its path (the measured name) and content.
type File struct {
	Path    string
	Content []byte
}

// KexecLoadResult describes a kexec_file_load.
type KexecLoadResult struct {
	Measurements []Result `json:"measurements"`
	// SegmentSize is the IMA segment size (0: no segment: no CONFIG_IMA_KEXEC, or the list
	// was too large).
	SegmentSize int64 `json:"segment_size"`
	// Copied is true when the list was copied at load (before 6.16).
	Copied bool `json:"copied"`
	// CopiedRecords counts the records copied at load.
	CopiedRecords int    `json:"copied_records,omitempty"`
	Note          string `json:"note,omitempty"`
}

// KexecLoad is kexec_file_load with default names for the kernel and initramfs.
func (k *Kernel) KexecLoad(kernel, initrd []byte, cmdline string) error {
	_, err := k.KexecLoadFiles(File{"/boot/vmlinuz-kexec", kernel}, File{"/boot/initrd-kexec.img", initrd}, cmdline)
	return err
}

// KexecLoadFiles is kexec_file_load (kimage_file_prepare_segments, ima_add_kexec_buffer,
// ima_kexec_cmdline): measure the kernel image
// (KEXEC_KERNEL_CHECK), the initramfs (KEXEC_INITRAMFS_CHECK) and the command line
// (KEXEC_CMDLINE, ima-buf "kexec-cmdline") per policy; with CONFIG_IMA_KEXEC size the
// segment (list + extra, page aligned; refused above half of RAM) and, before 6.16, copy
// the list into it now; from 6.16 record the kexec_load critical data after sizing. A
// later load replaces the image.
func (k *Kernel) KexecLoadFiles(kernel, initrd File, cmdline string) (KexecLoadResult, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out KexecLoadResult
	for _, f := range []struct {
		fn Func
		f  File
	}{{FuncKexecKernel, kernel}, {FuncKexecInitrd, initrd}} {
		k.mu.Unlock()
		r, err := k.measure(f.fn, MayRead, 0, f.f.Path, f.f.Content, 0o100644)
		k.mu.Lock()
		if err != nil {
			return out, err
		}
		out.Measurements = append(out.Measurements, r)
	}
	r, err := k.policyBuffer(FuncKexecCmdline, "", "kexec-cmdline", []byte(cmdline), k.fsMagicOf(kernel.Path))
	if err != nil {
		return out, err
	}
	out.Measurements = append(out.Measurements, r)
	img := &kexecImage{cmdline: cmdline}
	if k.feat.IMAKexec {
		// ima_add_kexec_buffer: kexec_segment_size is set before the size check, and the
		// kexec_load record is measured only once the buffer is allocated
		// (ima_alloc_kexec_file_buf), so a list too large for a segment gets none.
		size := k.listSize()
		extra := int64(pageSize / 2)
		if k.feat.ExtraMemoryRule && k.cfg.ExtraMemoryKB > 0 {
			extra = int64(k.cfg.ExtraMemoryKB) * 1024
		}
		seg := (size + extra + pageSize - 1) / pageSize * pageSize
		k.segSize = seg
		if seg > k.cfg.MemoryBytes/2 {
			img.note = "Binary measurement list too large."
		} else {
			img.segSize = seg
			if k.feat.KexecCriticalData {
				r, err := k.kexecEvent("kexec_load")
				if err != nil {
					return out, err
				}
				out.Measurements = append(out.Measurements, r)
			}
		}
		if img.segSize > 0 && !k.feat.CopyAtExecute {
			img.buf, _ = k.dump(img.segSize)
			img.copied = true
			out.CopiedRecords = len(k.staged) + len(k.cur)
		}
	}
	k.image = img
	out.SegmentSize, out.Copied, out.Note = img.segSize, img.copied, img.note
	return out, nil
}

// listSize is what ima_add_kexec_buffer sizes the segment for: every record the dump
// would write (7.2: staged and current) plus the header, which 7.2 counts once per part
// (ima_get_binary_runtime_size(BINARY) + ima_get_binary_runtime_size(BINARY_STAGED)).
func (k *Kernel) listSize() int64 {
	n := int64(serialize.KexecHeaderSize)
	if k.feat.TwoPartSize {
		n += serialize.KexecHeaderSize
	}
	for i := range k.staged {
		n += k.staged[i].kernelSize()
	}
	for i := range k.cur {
		n += k.cur[i].kernelSize()
	}
	return n
}

// kexecEvent records the ima_kexec critical data (ima_measure_kexec_event): the last
// computed kexec_segment_size and, from 7.2, the BINARY_FULL counters: every record added
// in this kernel, restored ones included (ima_restore_measurement_entry goes through
// ima_add_digest_entry), deleted ones not subtracted.
func (k *Kernel) kexecEvent(name string) (Result, error) {
	count, size := k.numRecords, k.htableSize+serialize.KexecHeaderSize
	if k.feat.CountCurrent {
		count, size = k.fullCount, k.fullSize+serialize.KexecHeaderSize
	}
	payload := fmt.Sprintf("kexec_segment_size=%d;ima_binary_runtime_size=%d;ima_runtime_measurements_count=%d;", k.segSize, size, count)
	return k.policyBuffer(FuncCriticalData, "ima_kexec", name, []byte(payload), 0)
}

// Suspend runs the reboot notifiers of a kexec reboot without jumping: from 6.16 the
// kexec_execute critical data is recorded; from 6.14 measurement is then suspended (A
// fails with EACCES, D and N with ESTALE). Calling it again does nothing.
func (k *Kernel) Suspend() (Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.suspend()
}

func (k *Kernel) suspend() (Result, error) {
	if k.suspended {
		return Result{Outcome: OutcomeSuspended}, nil
	}
	var res Result
	if k.feat.KexecCriticalData && k.image != nil {
		// ima_reboot_notifier: on "kexec reboot" under CONFIG_IMA_KEXEC.
		var err error
		if res, err = k.kexecEvent("kexec_execute"); err != nil {
			return res, err
		}
	}
	if k.feat.SuspendAtReboot {
		k.suspended = true
	}
	return res, nil
}

// KexecExecuteResult describes a kexec jump.
type KexecExecuteResult struct {
	Measurements []Result `json:"measurements,omitempty"`
	// Buffer is the handover buffer the next kernel received (nil: none).
	Buffer []byte `json:"-"`
	// BufferRecords is the count in the buffer header; Restored how many the next kernel
	// restored; RestoreError the reason the restore stopped early.
	BufferRecords uint64 `json:"buffer_records"`
	BufferBytes   int    `json:"buffer_bytes"`
	Truncated     bool   `json:"truncated,omitempty"`
	Restored      int    `json:"restored"`
	RestoreError  string `json:"restore_error,omitempty"`
	Profile       string `json:"profile"`
	// Count is the next kernel's list length (restored records, then its boot_aggregate).
	Count int `json:"count"`
}

// KexecExecute is reboot(LINUX_REBOOT_CMD_KEXEC): the reboot notifiers (Suspend), the dump
// of staged and current records into the segment at execute (6.16+; an overflow stops the
// dump and may cut the last record, ima_dump_measurement_list), then the jump: the model becomes the
// next kernel on the same TPM, which restores the buffer (digests recomputed, no extend,
// no hash-table insert; ima_restore_measurement_list) and adds its boot_aggregate. PCRs are not reset.
func (k *Kernel) KexecExecute() error {
	_, err := k.KexecExecuteResult()
	return err
}

// SetNextProfile makes the next kexec boot a kernel of another profile (default: the same).
func (k *Kernel) SetNextProfile(p Profile) error {
	if _, err := ParseProfile(string(p)); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.nextProfile = p
	return nil
}

// KexecExecuteResult is KexecExecute with details.
func (k *Kernel) KexecExecuteResult() (KexecExecuteResult, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out KexecExecuteResult
	if k.image == nil {
		return out, ErrNoImage
	}
	r, err := k.suspend()
	if err != nil {
		return out, err
	}
	if r.Outcome != "" && r.Outcome != OutcomeSuspended {
		out.Measurements = append(out.Measurements, r)
	}
	img := k.image
	var buf []byte
	switch {
	case img.segSize == 0:
	case img.copied:
		buf = img.buf
	default:
		buf, out.Truncated = k.dump(img.segSize)
	}
	if buf != nil {
		out.BufferBytes = len(buf)
		out.BufferRecords = le.Uint64(buf[16:])
	}
	k.lastDump = buf
	k.cmdline = img.cmdline
	if k.nextProfile != "" {
		k.cfg.Profile = k.nextProfile
		k.feat = k.nextProfile.Features()
		k.nextProfile = ""
	}
	if err := k.boot(buf); err != nil {
		return out, err
	}
	out.Buffer = buf
	out.Restored = k.restored
	if k.restoreErr != nil {
		out.RestoreError = k.restoreErr.Error()
	}
	out.Profile = string(k.cfg.Profile)
	out.Count = len(k.cur)
	return out, nil
}

// ColdBoot power-cycles the machine: TPM Reset (PCRs to reset values, resetCount up), the
// firmware, and a fresh kernel with an empty list. A loaded kexec image is gone.
func (k *Kernel) ColdBoot() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.tpm.powerCycle(); err != nil {
		return fmt.Errorf("TPM power cycle: %w", err)
	}
	if k.nextProfile != "" {
		k.cfg.Profile = k.nextProfile
		k.feat = k.nextProfile.Features()
		k.nextProfile = ""
	}
	if !k.cfg.NoFirmware {
		if err := k.firmware(); err != nil {
			return err
		}
	}
	k.lastDump = nil
	k.cmdline = DefaultCmdline(k.cfg)
	return k.boot(nil)
}

// LastKexecBuffer returns the handover buffer passed at the last kexec (nil: none).
func (k *Kernel) LastKexecBuffer() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return bytes.Clone(k.lastDump)
}

// KexecBufferNow serialises the list as a dump would now (staged first), with no size
// limit: what serialize's kexec writer makes of Staged()+List().
func (k *Kernel) KexecBufferNow() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, _ := k.dump(1 << 62)
	return b
}

// RestoreError is why the last restore stopped early (nil: complete or no buffer).
func (k *Kernel) RestoreError() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.restoreErr
}

// dump serialises staged then current records (ima_dump_measurement_list) into a segment of
// segSize bytes with serialize's kexec writer. Before each record it checks whether the
// buffer is full and stops if so; a record that does not fit is cut at the segment end and
// still counted in the header: ima_dump_measurement checks for room before each record and
// increments the count, and seq_putc drops the bytes past the buffer's end.
func (k *Kernel) dump(segSize int64) (buf []byte, truncated bool) {
	ws := &memWS{}
	kw, err := serialize.NewKexecWriter(ws, le, k.dg)
	if err != nil {
		panic(err) // memWS cannot fail
	}
	write := func(es []entry) bool {
		for i := range es {
			if int64(kw.Size()) >= segSize {
				return false
			}
			r := es[i].record()
			if es[i].viol {
				r.Digest = make([]byte, serialize.SHA1Size)
			}
			if err := kw.Write(&r); err != nil {
				panic(fmt.Sprintf("kmodel: dump record: %v", err))
			}
		}
		return true
	}
	if write(k.staged) {
		write(k.cur)
	}
	if err := kw.Close(); err != nil {
		panic(err)
	}
	buf = ws.b
	if int64(len(buf)) > segSize {
		buf = buf[:segSize]
		copy(buf, serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: serialize.KexecVersion, BufferSize: uint64(segSize), Count: kw.Count()}, le))
		truncated = true
	}
	return buf, truncated
}

// memWS is an in-memory io.WriteSeeker.
type memWS struct {
	b   []byte
	off int64
}

func (m *memWS) Write(p []byte) (int, error) {
	end := m.off + int64(len(p))
	if end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	copy(m.b[m.off:], p)
	m.off = end
	return len(p), nil
}

func (m *memWS) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += m.off
	case io.SeekEnd:
		off += int64(len(m.b))
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	m.off = off
	return off, nil
}

// Restore errors (ima_restore_measurement_list fails with -EINVAL).
//
//lint:ignore ST1005 the kernel's own message, as it logs it
var errRestore = errors.New("Failed to restore the measurement list")

// restore is ima_restore_measurement_list (ima_template.c, 7.2), called with k.mu held by
// boot. Each template is looked up by name or format (lookup_template_desc), so a record
// of a custom format equal to a built-in one comes back under the built-in name. Restored
// records are counted like measured ones (ima_add_digest_entry: BINARY and BINARY_FULL)
// but neither extended nor put in the hash table. It returns how many records were
// restored and the error that stopped it.
func (k *Kernel) restore(buf []byte) (int, error) {
	if len(buf) < serialize.KexecHeaderSize {
		return 0, nil
	}
	version := le.Uint16(buf)
	if version != serialize.KexecVersion {
		return 0, fmt.Errorf("%w: header version %d: %w", errRestore, version, errEINVAL)
	}
	size, count := le.Uint64(buf[8:]), le.Uint64(buf[16:])
	if count > 1<<63 {
		return 0, fmt.Errorf("%w: count %d: %w", errRestore, count, errEINVAL)
	}
	// buffer_size is not checked against the segment; we cannot read past it, though.
	end := min(size, uint64(len(buf)))
	if end < serialize.KexecHeaderSize {
		return 0, nil
	}
	br := serialize.NewBinaryReader(bytes.NewReader(buf[serialize.KexecHeaderSize:end]), le, serialize.SHA1Size)
	n := 0
	for i := uint64(0); i < count && uint64(br.Offset())+serialize.KexecHeaderSize < end; i++ {
		rec, err := br.Next()
		if err != nil {
			return n, fmt.Errorf("%w: record %d: %v: %w", errRestore, i, err, errEINVAL)
		}
		if i == count-1 && uint64(br.Offset())+serialize.KexecHeaderSize != size {
			return n, fmt.Errorf("%w: record %d does not end at buffer_size %d: %w", errRestore, i, size, errEINVAL)
		}
		if len(rec.Template) > serialize.MaxKexecTemplateNameLen {
			return n, fmt.Errorf("%w: record %d: template name of %d bytes: %w", errRestore, i, len(rec.Template), errEINVAL)
		}
		if rec.Template == serialize.TemplateIMA {
			return n, fmt.Errorf("%w: record %d: unsupported template \"ima\": %w", errRestore, i, errEINVAL)
		}
		if _, err := serialize.ParseFields(rec, le); err != nil {
			return n, fmt.Errorf("%w: record %d: %v: %w", errRestore, i, err, errEINVAL)
		}
		e := entry{data: bytes.Clone(rec.Data), pcr: rec.PCR, tmpl: canonicalTemplate(rec.Template), viol: rec.IsViolation()}
		if !e.viol {
			r := e.record()
			r.Digest = nil
			d, err := k.dg.SHA1Digest(&r)
			if err != nil {
				return n, fmt.Errorf("%w: record %d: %v: %w", errRestore, i, err, errEINVAL)
			}
			e.sha1 = d
		}
		k.append(e) // no extend, no hash-table insert
		k.fullCount++
		k.fullSize += e.kernelSize()
		n++
	}
	return n, nil
}
