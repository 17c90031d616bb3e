package serialize

import (
	"fmt"
	"path"
	"strings"
)

// Measured describes a measurement a kernel would make, so its record can be rebuilt
// without the kernel: a file (KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK, FILE_CHECK) or a
// buffer (kexec-cmdline). Rebuilt records are only candidates: a join that uses one must
// still replay to the TPM (docs/trust-model.md, "The rule").
type Measured struct {
	PCR uint32
	// Algo is the kernel hash name of the ima_hash algorithm ("sha256").
	Algo string
	// Digest is the file or buffer digest in Algo.
	Digest []byte
	// SHA1 is the SHA1 digest of the same bytes, used by the `d` field when Algo is not
	// sha1 or md5 (the kernel hashes again with SHA1).
	SHA1 []byte
	// Name is the event name: the path as IMA records it, or a buffer's event name.
	Name string
	// Buf is the buffer of a buffer measurement (nil for files).
	Buf []byte
	// IMAXattr is the file's security.ima value (nil when absent).
	IMAXattr []byte
	// Owner and mode for the iuid/igid/imode fields (files only).
	UID, GID uint32
	Mode     uint16
	// IsBuffer marks a buffer measurement: no file, so iuid/igid/imode and sig are empty.
	IsBuffer bool
}

// BuildRecord returns the record the kernel writes for m with the given template, as
// ima_alloc_init_template and the field init functions of ima_template_lib.c fill it.
// Fields that depend on state this package cannot know (EVM xattrs, appended signatures)
// are left empty, as they are for files without them.
func BuildRecord(template string, m Measured, order ByteOrder) (Record, error) {
	t, err := LookupTemplate(template)
	if err != nil {
		return Record{}, err
	}
	// ima_write_template_field_data turns spaces into '_' in string fields.
	name := strings.ReplaceAll(m.Name, " ", "_")
	var fields []Field
	for _, id := range t.Fields {
		var v []byte
		switch id {
		case FieldD:
			switch m.Algo {
			case "sha1", "md5":
				v = m.Digest
			default:
				if len(m.SHA1) != SHA1Size {
					return Record{}, fmt.Errorf("%w: the d field of %s needs the SHA1 digest", ErrFormat, template)
				}
				v = m.SHA1
			}
		case FieldN:
			v = []byte(name)
			if len(v) > MaxEventNameLen {
				// ima_eventname_init: too long a path falls back to the file name.
				v = []byte(path.Base(name))
				if len(v) > MaxEventNameLen {
					v = v[:MaxEventNameLen]
				}
			}
		case FieldDNG:
			v = DigestField(m.Algo, m.Digest)
		case FieldDNGv2:
			v = DigestField("ima:"+m.Algo, m.Digest)
		case FieldNNG:
			v = NameField(name)
		case FieldSig:
			// A signature type (digsig 0x03, verity 0x06) is recorded; other security.ima
			// values are not (the EVM portable signature case is not predicted).
			if len(m.IMAXattr) > 0 && (m.IMAXattr[0] == 0x03 || m.IMAXattr[0] == 0x06) && !m.IsBuffer {
				v = m.IMAXattr
			}
		case FieldBuf:
			v = m.Buf
		case FieldIUID:
			if !m.IsBuffer {
				v = order.AppendUint32(nil, m.UID)
			}
		case FieldIGID:
			if !m.IsBuffer {
				v = order.AppendUint32(nil, m.GID)
			}
		case FieldIMode:
			if !m.IsBuffer {
				v = order.AppendUint16(nil, m.Mode)
			}
		}
		fields = append(fields, Field{ID: id, Data: v})
	}
	data, err := BuildData(template, fields, order)
	if err != nil {
		return Record{}, err
	}
	rec := Record{PCR: m.PCR, Template: template, Data: data}
	d, err := NewDigester().SHA1Digest(&rec)
	if err != nil {
		return Record{}, err
	}
	rec.Digest = d[:]
	return rec, nil
}
