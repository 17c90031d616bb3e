// Package serialize reads, writes and replays the Linux IMA measurement list in the
// kernel's own formats: the binary list (binary_runtime_measurements*), the ASCII list
// (ascii_runtime_measurements*) and the kexec handover buffer. It is pure: readers and
// writers in, no file or syscall access, and the same bytes give the same result on every
// machine. The kernel behaviour each function mirrors is cited from
// docs/kernel.md or named by the kernel function it mirrors.
package serialize

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Kernel limits (docs/kernel.md, "Limits").
const (
	// MaxPCR is one past the highest PCR index a record may name (TPM 2.0 PC client: 24).
	MaxPCR = 24
	// MaxTemplateNameLen bounds template names and custom format strings: at most 15
	// field IDs of at most 16 characters with separators fit in 255 bytes.
	MaxTemplateNameLen = 255
	// MaxKexecTemplateNameLen is the longest template name a kernel restores from a kexec
	// buffer (ima_restore_measurement_list); longer names stop the restore.
	MaxKexecTemplateNameLen = 68
	// MaxTemplateDataLen bounds one record's template data. The kernel has no fixed limit;
	// 64 MiB is far beyond any real record (certificates and kexec command lines are KiB).
	MaxTemplateDataLen = 64 << 20
	// MaxEventNameLen is IMA_EVENT_NAME_LEN_MAX, the longest `n` field of the ima template.
	MaxEventNameLen = 255
	// SHA1Size is the size of the digest in the SHA1 list and the kexec buffer.
	SHA1Size = 20
)

// TemplateIMA is the name of the original template, which has its own binary form and
// template-digest input (docs/kernel.md, "The binary list", "Template digest").
const TemplateIMA = "ima"

// Record is one measurement record.
//
// Data is the template data exactly as it follows the template name in the binary list:
// for every template but `ima` the concatenation of (u32 length, bytes) per field, which is
// also the input of the template digest; for `ima` the 20-byte digest, a u32 name length and
// the name without NUL (the binary list has no data-length field for it).
type Record struct {
	PCR      uint32
	Template string
	Data     []byte
	// Digest is the template digest as the source gave it, in the source's bank (SHA1 for
	// the legacy and kexec formats); all zero marks a violation. May be nil for records
	// built in memory; writers then compute it.
	Digest []byte
}

// IsViolation reports whether the record is a violation: its stored template digest is
// all zero (docs/kernel.md, "Extending the TPM").
func (r *Record) IsViolation() bool {
	if len(r.Digest) == 0 {
		return false
	}
	for _, b := range r.Digest {
		if b != 0 {
			return false
		}
	}
	return true
}

// Clone returns a deep copy; records returned by readers are only valid until the next read.
func (r *Record) Clone() Record {
	c := *r
	c.Data = bytes.Clone(r.Data)
	c.Digest = bytes.Clone(r.Digest)
	return c
}

// hashInput returns the bytes the kernel hashes for the template digest (ima_calc_field_array_hash), using
// scratch for the `ima` template's padded form.
func (r *Record) hashInput(scratch *[SHA1Size + MaxEventNameLen + 1]byte, order ByteOrder) ([]byte, error) {
	if r.Template != TemplateIMA {
		return r.Data, nil
	}
	d, name, err := splitIMAData(r.Data, order)
	if err != nil {
		return nil, err
	}
	*scratch = [SHA1Size + MaxEventNameLen + 1]byte{}
	copy(scratch[:], d)
	copy(scratch[SHA1Size:], name)
	return scratch[:], nil
}

// splitIMAData splits `ima` template data (d ‖ u32 len ‖ name) into digest and name.
func splitIMAData(data []byte, order ByteOrder) (d, name []byte, err error) {
	if len(data) < SHA1Size+4 {
		return nil, nil, fmt.Errorf("%w: ima template data of %d bytes, need at least %d", ErrFormat, len(data), SHA1Size+4)
	}
	n := order.Uint32(data[SHA1Size:])
	if n > MaxEventNameLen {
		return nil, nil, fmt.Errorf("%w: ima template name of %d bytes (max %d)", ErrLimit, n, MaxEventNameLen)
	}
	if int(n) != len(data)-SHA1Size-4 {
		return nil, nil, fmt.Errorf("%w: ima template name length %d does not match %d data bytes", ErrFormat, n, len(data)-SHA1Size-4)
	}
	return data[:SHA1Size], data[SHA1Size+4:], nil
}

// Digester computes template digests and PCR extend values for records. It keeps scratch
// space, so one Digester must not be used concurrently.
type Digester struct {
	Order   ByteOrder // byte order of the lengths inside `ima` template data
	Scheme  Scheme
	scratch [SHA1Size + MaxEventNameLen + 1]byte
	sha1    [SHA1Size]byte
}

// NewDigester returns a Digester for little-endian lists and the 5.8+ scheme.
func NewDigester() *Digester { return &Digester{Order: binary.LittleEndian, Scheme: SchemeHash} }

// TemplateDigest writes into dst (len >= bank.Size) the digest the kernel shows for rec in
// the bank's list file (docs/kernel.md, "The binary list"): all zero for a violation, the bank's own hash of the
// template data when the kernel has one, else SHA1 padded with zeros.
// A record without Digest is never a violation.
func (d *Digester) TemplateDigest(dst []byte, rec *Record, bank *Bank) error {
	dst = dst[:bank.Size]
	if rec.IsViolation() {
		clear(dst)
		return nil
	}
	in, err := rec.hashInput(&d.scratch, d.Order)
	if err != nil {
		return err
	}
	if bank.hash != 0 && d.Scheme == SchemeHash {
		bank.sum(dst, in)
		return nil
	}
	if err := bank.checkComputable(); err != nil && d.Scheme == SchemeHash {
		return err
	}
	SHA1.sum(d.sha1[:], in)
	copy(dst, d.sha1[:])
	clear(dst[SHA1Size:])
	return nil
}

// ExtendValue writes into dst the value the kernel extends into the bank's PCR for rec:
// the template digest, or for a violation 0xFF over the bank size (5.8+ and a known hash)
// or 0xFF x20 followed by zeros (ima_init_digests; docs/kernel.md, "Extending the TPM").
func (d *Digester) ExtendValue(dst []byte, rec *Record, bank *Bank) error {
	dst = dst[:bank.Size]
	if rec.IsViolation() {
		n := bank.Size
		if d.Scheme == SchemePad || !bank.KernelHash() {
			n = SHA1Size
		}
		for i := range dst {
			if i < n {
				dst[i] = 0xFF
			} else {
				dst[i] = 0
			}
		}
		return nil
	}
	return d.TemplateDigest(dst, rec, bank)
}

// SHA1Digest returns the SHA1 template digest of rec (zero for a violation): the digest the
// SHA1 list and the kexec buffer carry.
func (d *Digester) SHA1Digest(rec *Record) ([SHA1Size]byte, error) {
	var out [SHA1Size]byte
	err := d.TemplateDigest(out[:], rec, &SHA1)
	return out, err
}

// ByteOrder is the order of the u32 and u64 fields: binary.LittleEndian for x86, arm64 LE,
// ppc64le and for canonical (`ima_canonical_fmt`) lists of big-endian kernels;
// binary.BigEndian for big-endian kernels without it (ima_canonical_fmt; docs/kernel.md, "The binary list").
type ByteOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}
