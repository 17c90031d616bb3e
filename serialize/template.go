package serialize

import (
	"bytes"
	"fmt"
	"strings"
)

// Field IDs the kernel knows (ima_template.c supported_fields; docs/kernel.md, "Templates").
const (
	FieldD            = "d"
	FieldN            = "n"
	FieldDNG          = "d-ng"
	FieldDNGv2        = "d-ngv2"
	FieldNNG          = "n-ng"
	FieldSig          = "sig"
	FieldBuf          = "buf"
	FieldDModsig      = "d-modsig"
	FieldModsig       = "modsig"
	FieldEVMSig       = "evmsig"
	FieldIUID         = "iuid"
	FieldIGID         = "igid"
	FieldIMode        = "imode"
	FieldXattrNames   = "xattrnames"
	FieldXattrLengths = "xattrlengths"
	FieldXattrValues  = "xattrvalues"
)

// fieldFormat is how the ASCII list renders a field (ima_template_lib.c data_formats).
type fieldFormat int

const (
	fmtHex        fieldFormat = iota // lower-case hex of the bytes
	fmtDigestAlgo                    // "<algo>:" (or "<type>:<algo>:") then hex of the digest
	fmtString                        // bytes up to the first NUL
	fmtUint                          // unsigned decimal of a 1/2/4/8-byte integer
)

var knownFields = map[string]fieldFormat{
	FieldD: fmtHex, FieldN: fmtString, FieldDNG: fmtDigestAlgo, FieldDNGv2: fmtDigestAlgo,
	FieldNNG: fmtString, FieldSig: fmtHex, FieldBuf: fmtHex, FieldDModsig: fmtDigestAlgo,
	FieldModsig: fmtHex, FieldEVMSig: fmtHex, FieldIUID: fmtUint, FieldIGID: fmtUint,
	FieldIMode: fmtUint, FieldXattrNames: fmtString, FieldXattrLengths: fmtHex, FieldXattrValues: fmtHex,
}

// Template is a template descriptor: a name and its field IDs.
type Template struct {
	Name   string   // the built-in name, or the format string of a custom template
	Fields []string // field IDs in order
}

// Built-in templates (ima_template.c builtin_templates; docs/kernel.md, "Templates").
var builtinTemplates = []Template{
	{TemplateIMA, []string{FieldD, FieldN}},
	{"ima-ng", []string{FieldDNG, FieldNNG}},
	{"ima-ngv2", []string{FieldDNGv2, FieldNNG}},
	{"ima-sig", []string{FieldDNG, FieldNNG, FieldSig}},
	{"ima-sigv2", []string{FieldDNGv2, FieldNNG, FieldSig}},
	{"ima-buf", []string{FieldDNG, FieldNNG, FieldBuf}},
	{"ima-modsig", []string{FieldDNG, FieldNNG, FieldSig, FieldDModsig, FieldModsig}},
	{"evm-sig", []string{FieldDNG, FieldNNG, FieldEVMSig, FieldXattrNames, FieldXattrLengths, FieldXattrValues, FieldIUID, FieldIGID, FieldIMode}},
}

// Kernel limits on custom formats (IMA_TEMPLATE_NUM_FIELDS_MAX, IMA_TEMPLATE_FIELD_ID_MAX_LEN).
const (
	maxTemplateFields  = 15
	maxFieldIDLen      = 16
	templateSeparators = "|"
)

// LookupTemplate finds a template the way the kernel does on restore: by built-in name or
// by format string, else as a custom format whose field IDs must all be known.
func LookupTemplate(name string) (Template, error) {
	for i, t := range builtinTemplates {
		if t.Name == name || builtinFormats[i] == name {
			return Template{Name: name, Fields: t.Fields}, nil
		}
	}
	return ParseFormat(name)
}

// IsBuiltinName reports whether name is a built-in template's name (what ima_template=
// selects); anything else is a format (ima_template_fmt=, ima_template.c).
func IsBuiltinName(name string) bool {
	for _, t := range builtinTemplates {
		if t.Name == name {
			return true
		}
	}
	return false
}

// builtinFormats are the format strings of builtinTemplates, computed once: LookupTemplate
// runs for every record rendered.
var builtinFormats = func() []string {
	f := make([]string, len(builtinTemplates))
	for i, t := range builtinTemplates {
		f[i] = t.Format()
	}
	return f
}()

// ParseFormat parses a custom format string such as "d-ng|n-ng|sig".
func ParseFormat(format string) (Template, error) {
	if format == "" || len(format) > MaxTemplateNameLen {
		return Template{}, fmt.Errorf("%w: format %q", ErrUnknownTemplate, format)
	}
	ids := strings.Split(format, templateSeparators)
	if len(ids) > maxTemplateFields {
		return Template{}, fmt.Errorf("%w: format %q has %d fields (max %d)", ErrUnknownTemplate, format, len(ids), maxTemplateFields)
	}
	for _, id := range ids {
		if _, ok := knownFields[id]; !ok || len(id) > maxFieldIDLen {
			return Template{}, fmt.Errorf("%w: format %q has unknown field %q", ErrUnknownTemplate, format, id)
		}
	}
	return Template{Name: format, Fields: ids}, nil
}

// Format returns the template's format string ("d-ng|n-ng").
func (t Template) Format() string { return strings.Join(t.Fields, templateSeparators) }

// Field is one decoded template field.
type Field struct {
	ID   string
	Data []byte
}

// ParseFields splits a record's template data into the template's fields, which must use
// up the data exactly (as ima_restore_template_data requires). For `ima` the fields are
// the 20-byte digest and the name without NUL.
func ParseFields(rec *Record, order ByteOrder) ([]Field, error) {
	return appendFields(nil, rec, order)
}

// appendFields is ParseFields appending to fields[:0], so that a caller rendering many
// records reuses one slice.
func appendFields(fields []Field, rec *Record, order ByteOrder) ([]Field, error) {
	t, err := LookupTemplate(rec.Template)
	if err != nil {
		return nil, err
	}
	fields = fields[:0]
	if rec.Template == TemplateIMA {
		d, name, err := splitIMAData(rec.Data, order)
		if err != nil {
			return nil, err
		}
		return append(fields, Field{FieldD, d}, Field{FieldN, name}), nil
	}
	data := rec.Data
	off := 0
	for i, id := range t.Fields {
		if len(data) < 4 {
			return nil, fmt.Errorf("%w: template %s field %d (%s) length at data byte %d", ErrTruncated, rec.Template, i, id, off)
		}
		n := order.Uint32(data)
		if uint64(n) > uint64(len(data)-4) {
			return nil, fmt.Errorf("%w: template %s field %d (%s) claims %d bytes, %d left", ErrFormat, rec.Template, i, id, n, len(data)-4)
		}
		fields = append(fields, Field{id, data[4 : 4+n]})
		data = data[4+n:]
		off += 4 + int(n)
	}
	if len(data) != 0 {
		return nil, fmt.Errorf("%w: template %s: %d bytes after the last field", ErrFormat, rec.Template, len(data))
	}
	return fields, nil
}

// BuildData encodes fields as template data for the template (the inverse of ParseFields).
func BuildData(template string, fields []Field, order ByteOrder) ([]byte, error) {
	t, err := LookupTemplate(template)
	if err != nil {
		return nil, err
	}
	if len(fields) != len(t.Fields) {
		return nil, fmt.Errorf("%w: template %s has %d fields, got %d", ErrFormat, template, len(t.Fields), len(fields))
	}
	for i, f := range fields {
		if f.ID != t.Fields[i] {
			return nil, fmt.Errorf("%w: template %s field %d is %s, got %s", ErrFormat, template, i, t.Fields[i], f.ID)
		}
	}
	if template == TemplateIMA {
		if len(fields[0].Data) != SHA1Size || len(fields[1].Data) > MaxEventNameLen {
			return nil, fmt.Errorf("%w: ima template needs a 20-byte digest and a name of at most %d bytes", ErrFormat, MaxEventNameLen)
		}
		b := append([]byte(nil), fields[0].Data...)
		b = order.AppendUint32(b, uint32(len(fields[1].Data)))
		return append(b, fields[1].Data...), nil
	}
	var b []byte
	for _, f := range fields {
		b = order.AppendUint32(b, uint32(len(f.Data)))
		b = append(b, f.Data...)
	}
	return b, nil
}

// DigestField builds a d-ng field value: "<algo>:\0<digest>" (ima_eventdigest_init_common).
func DigestField(algo string, digest []byte) []byte {
	b := make([]byte, 0, len(algo)+2+len(digest))
	b = append(b, algo...)
	b = append(b, ':', 0)
	return append(b, digest...)
}

// NameField builds an n-ng field value: the name and a NUL.
func NameField(name string) []byte { return append([]byte(name), 0) }

// ParseDigestField splits a d-ng/d-ngv2/d-modsig value into its prefix ("sha256" or
// "ima:sha256") and the digest.
func ParseDigestField(v []byte) (prefix string, digest []byte, err error) {
	i := bytes.IndexByte(v, 0)
	if i < 1 || v[i-1] != ':' {
		return "", nil, fmt.Errorf("%w: digest field without \"<algo>:\\0\" prefix", ErrFormat)
	}
	return string(v[:i-1]), v[i+1:], nil
}

// EventName returns the record's event name (n or n-ng field, up to the first NUL), or ""
// when the template has none or the data does not parse.
func EventName(rec *Record, order ByteOrder) string {
	if rec.Template == TemplateIMA {
		_, name, err := splitIMAData(rec.Data, order)
		if err != nil {
			return ""
		}
		return string(name)
	}
	// Fast path: every built-in template but ima has n-ng as its second field.
	fields, err := ParseFields(rec, order)
	if err != nil {
		return ""
	}
	for _, f := range fields {
		if f.ID == FieldNNG || f.ID == FieldN {
			if i := bytes.IndexByte(f.Data, 0); i >= 0 {
				return string(f.Data[:i])
			}
			return string(f.Data)
		}
	}
	return ""
}

// FieldValue returns the first field with the given ID.
func FieldValue(fields []Field, id string) ([]byte, bool) {
	for _, f := range fields {
		if f.ID == id {
			return f.Data, true
		}
	}
	return nil, false
}
