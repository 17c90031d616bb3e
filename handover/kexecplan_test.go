package handover

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/serialize"
)

func TestParsePolicy(t *testing.T) {
	for _, c := range []struct {
		name, policy string
		want         string // measuresKexec: "true", "false", "nil"
		templates    string
	}{
		{"kexec rules", "measure func=BPRM_CHECK mask=MAY_EXEC\nmeasure func=KEXEC_KERNEL_CHECK template=ima-sig\nmeasure func=KEXEC_CMDLINE\n", "true", "ima-sig"},
		{"no kexec rule", "measure func=BPRM_CHECK mask=MAY_EXEC\nmeasure func=FILE_CHECK mask=MAY_READ uid=0\nappraise func=KEXEC_KERNEL_CHECK appraise_type=imasig\n", "false", ""},
		{"rule without func", "dont_measure fsmagic=0x9fa0\nmeasure fowner=0\n", "nil", ""},
		{"empty", "", "false", ""},
	} {
		p, err := parsePolicy(strings.NewReader(c.policy))
		if err != nil {
			t.Fatal(err)
		}
		got := "nil"
		if m := p.measuresKexec(); m != nil {
			got = map[bool]string{true: "true", false: "false"}[*m]
		}
		if got != c.want || strings.Join(p.kexecTemplates, ",") != c.templates {
			t.Errorf("%s: measures kexec %s, templates %q; want %s, %q", c.name, got, p.kexecTemplates, c.want, c.templates)
		}
	}
}

func TestIMAKexecFromConfig(t *testing.T) {
	dir := t.TempDir()
	proc, boot := filepath.Join(dir, "proc"), filepath.Join(dir, "boot")
	os.MkdirAll(proc, 0o755)
	os.MkdirAll(boot, 0o755)
	p := Paths{Securityfs: dir, Proc: proc}
	if v, _ := imaKexec(p, boot, "6.1.0-x", nil); v != "" {
		t.Fatalf("no config, no records: %q, want unknown", v)
	}
	if v, from := imaKexec(p, boot, "6.1.0-x", &logProfile{kexecEvents: true}); v != "yes" || !strings.Contains(from, "log") {
		t.Fatalf("kexec_load records: %q %q", v, from)
	}
	os.WriteFile(filepath.Join(boot, "config-6.1.0-x"), []byte("CONFIG_IMA=y\n# CONFIG_IMA_KEXEC is not set\n"), 0o644)
	if v, _ := imaKexec(p, boot, "6.1.0-x", &logProfile{kexecEvents: true}); v != "no" {
		t.Fatalf("config says not set: %q", v)
	}
	f, _ := os.Create(filepath.Join(proc, "config.gz"))
	zw := gzip.NewWriter(f)
	zw.Write([]byte("CONFIG_IMA=y\nCONFIG_IMA_KEXEC=y\n"))
	zw.Close()
	f.Close()
	if v, from := imaKexec(p, boot, "6.1.0-x", nil); v != "yes" || !strings.Contains(from, "config.gz") {
		t.Fatalf("/proc/config.gz first: %q %q", v, from)
	}
}

// TestLogProfile: the records of the running kernel count (a boot_aggregate starts them
// anew); buffer records and violations name ima_hash, file records may name their
// security.ima's algorithm; the boot_aggregate tells ima_hash only where the kernel's
// fallback cannot explain it.
func TestLogProfile(t *testing.T) {
	rec := func(tmpl, algo, name string, buf bool) *serialize.Record {
		fields := []serialize.Field{{ID: serialize.FieldDNG, Data: serialize.DigestField(algo, make([]byte, 32))}, {ID: serialize.FieldNNG, Data: serialize.NameField(name)}}
		if buf {
			fields = append(fields, serialize.Field{ID: serialize.FieldBuf, Data: []byte("x")})
		} else if tmpl == "ima-sig" {
			fields = append(fields, serialize.Field{ID: serialize.FieldSig})
		}
		data, err := serialize.BuildData(tmpl, fields, storeOrder)
		if err != nil {
			t.Fatal(err)
		}
		return &serialize.Record{PCR: 10, Template: tmpl, Data: data, Digest: bytes.Repeat([]byte{1}, 20)}
	}
	p := newLogProfile()
	p.see(rec("ima-sig", "sha1", "boot_aggregate", false)) // an earlier kernel's records
	p.see(rec("ima-sig", "sha1", "/old", false))
	p.see(rec("ima-ng", "sha256", "boot_aggregate", false))
	p.see(rec("ima-ng", "sha384", "/bin/a", false))
	p.see(rec("ima-ng", "sha384", "/bin/b", false))
	if got := strings.Join(p.templates, ","); got != "ima-ng" {
		t.Errorf("templates %q: the earlier kernel's must not count", got)
	}
	if a, _ := p.imaHash(nil); a != "sha384" {
		t.Errorf("file records: %q", a)
	}
	p.see(rec("ima-buf", "sha512", "kexec-cmdline", true))
	if a, from := p.imaHash(nil); a != "sha512" || !strings.Contains(from, "buffer") {
		t.Errorf("buffer record: %q %q", a, from)
	}
	q := newLogProfile()
	q.see(rec("ima-ng", "sha256", "boot_aggregate", false))
	if a, _ := q.imaHash([]string{"sha1", "sha256"}); a != "" {
		t.Errorf("boot_aggregate sha256 with a TPM lacking sha512: %q, want unknown", a)
	}
	if a, _ := q.imaHash([]string{"sha1", "sha256", "sha384", "sha512"}); a != "sha256" {
		t.Errorf("boot_aggregate sha256 with every bank: %q", a)
	}
}
