package kcmdline

import (
	"reflect"
	"testing"
)

// The expected values are what next_arg (lib/cmdline.c) leaves in param and val.
func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Arg
	}{
		{"", nil},
		{"  \t\n", nil},
		{"a b=c", []Arg{{Key: "a", Raw: "a"}, {Key: "b", Value: "c", HasValue: true, Raw: "b=c"}}},
		{`x="a b" y`, []Arg{{Key: "x", Value: "a b", HasValue: true, Raw: `x="a b"`}, {Key: "y", Raw: "y"}}},
		{`"x=a b"`, []Arg{{Key: "x", Value: "a b", HasValue: true, Raw: `"x=a b"`}}},
		{`"a b"`, []Arg{{Key: "a b", Raw: `"a b"`}}},
		{`"`, []Arg{{Key: "", Raw: `"`}}},
		{`k="`, []Arg{{Key: "k", Value: "", HasValue: true, Raw: `k="`}}},
		{`k=a"b c"`, []Arg{{Key: "k", Value: `a"b c"`, HasValue: true, Raw: `k=a"b c"`}}},
		{`k=""x""`, []Arg{{Key: "k", Value: `"x"`, HasValue: true, Raw: `k=""x""`}}},
		{"=a=b", []Arg{{Key: "=a", Value: "b", HasValue: true, Raw: "=a=b"}}},
		{"a=b=c", []Arg{{Key: "a", Value: "b=c", HasValue: true, Raw: "a=b=c"}}},
		{"a\xa0b\vc", []Arg{{Key: "a", Raw: "a"}, {Key: "b", Raw: "b"}, {Key: "c", Raw: "c"}}},
		{"a -- b=1", []Arg{{Key: "a", Raw: "a"}, {Key: "--", Raw: "--"}, {Key: "b", Value: "1", HasValue: true, Raw: "b=1"}}},
	} {
		if got := Parse(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestLookup(t *testing.T) {
	line := `console=ttyS0 ima-hash=sha512 ima_hash=sha1 ima_flush_htable ima_template_fmt="d-ngv2|n-ng" -- ima_policy=tcb`
	if v := Value(line, "ima_hash"); v != "sha512" {
		t.Errorf("ima_hash = %q, want the first occurrence, sha512 (hash_setup_done)", v)
	}
	if v := Value(line, "ima_template_fmt"); v != "d-ngv2|n-ng" {
		t.Errorf("ima_template_fmt = %q", v)
	}
	if !Has(line, "ima_flush_htable") || Has(line, "ima_policy") || Has(line, "ima_hash_x") {
		t.Error("Has: a bare parameter must be found, none after \"--\" nor a longer name")
	}
	if got := Values("a imakexec.initrd=sha256:00 -- imakexec.initrd=sha1:11", "imakexec.initrd"); !reflect.DeepEqual(got, []string{"sha256:00", "sha1:11"}) {
		t.Errorf("Values = %q", got)
	}
	if got := Without(`a  x="1 2"  imakexec.initrd=sha256:00 b`, "imakexec.initrd"); got != `a x="1 2" b` {
		t.Errorf("Without = %q", got)
	}
}

// FuzzParse checks that Parse never panics and that every argument's Raw is a piece of
// the input in order.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", `"`, `a="b c" d`, "=", `"=""`, "a\xa0b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rest := s
		for _, a := range Parse(s) {
			i := indexOf(rest, a.Raw)
			if a.Raw == "" || i < 0 {
				t.Fatalf("Raw %q not in %q", a.Raw, rest)
			}
			rest = rest[i+len(a.Raw):]
		}
	})
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
