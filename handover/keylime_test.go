package handover

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/serialize"
)

func TestKeylimeChecker(t *testing.T) {
	rec := func(tmpl string, pcr uint32, name string, buf bool) *serialize.Record {
		d := sha256.Sum256([]byte(name))
		m := serialize.Measured{PCR: pcr, Algo: "sha256", Digest: d[:], SHA1: d[:20], Name: name}
		if buf {
			m.Buf, m.IsBuffer = []byte("x"), true
		}
		r, err := serialize.BuildRecord(tmpl, m, storeOrder)
		if err != nil {
			t.Fatalf("%s: %v", tmpl, err)
		}
		return &r
	}
	// The kernel writes string fields with spaces as '_' (ima_write_template_field_data);
	// a space comes only from elsewhere.
	spaced := func(r *serialize.Record) *serialize.Record {
		r.Data = bytes.ReplaceAll(r.Data, []byte("/my_file"), []byte("/my file"))
		return r
	}
	ok := []*serialize.Record{rec("ima-ng", 10, "boot_aggregate", false), rec("ima-sig", 10, "/usr/bin/a", false),
		rec("ima-buf", 10, "kexec-cmdline", true), rec("ima", 10, "/usr/bin/b", false), rec("ima-ng", 10, "/a path/with spaces", false)}
	for _, tc := range []struct {
		name string
		add  []*serialize.Record
		want []string // substrings of the reasons, in order
	}{
		{"keylime's templates on PCR 10", nil, nil},
		{"a custom template", []*serialize.Record{rec("d-ng|n-ng|iuid", 10, "/x", false), rec("d-ng|n-ng|iuid", 10, "/y", false)}, []string{"template d-ng|n-ng|iuid (2 records, the first is record 5)"}},
		{"ima-modsig", []*serialize.Record{rec("ima-modsig", 10, "/x", false)}, []string{"template ima-modsig"}},
		{"another PCR", []*serialize.Record{rec("ima-ng", 11, "/x", false)}, []string{"PCR 11 (1 records, the first is record 5)"}},
		{"a newline in a name", []*serialize.Record{rec("ima-ng", 10, "/x\ny", false)}, []string{"line break"}},
		{"a space in an ima-sig name", []*serialize.Record{spaced(rec("ima-sig", 10, "/my_file", false))}, []string{"with a space"}},
	} {
		c := NewKeylimeChecker()
		for i, r := range append(append([]*serialize.Record{}, ok...), tc.add...) {
			c.Add(uint64(i), r)
		}
		res := c.Result()
		if res.Compatible != (len(tc.want) == 0) || len(res.Reasons) != len(tc.want) {
			t.Errorf("%s: got %+v, want reasons %q", tc.name, res, tc.want)
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(res.Reasons[i], w) {
				t.Errorf("%s: reason %q does not say %q", tc.name, res.Reasons[i], w)
			}
		}
	}
}
