package frame

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	e := NewEncoder(&buf)
	big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 100)
	if err := e.Mark("hello world"); err != nil {
		t.Fatal(err)
	}
	if err := e.Blob("a/b.bin", big); err != nil {
		t.Fatal(err)
	}
	if err := e.Blob("empty", nil); err != nil {
		t.Fatal(err)
	}
	if err := e.Mark(MarkPoweroff); err != nil {
		t.Fatal(err)
	}
	// What a tty with ONLCR plus some noise does to the stream.
	wire := "noise\n" + strings.ReplaceAll(buf.String(), "\n", "\r\n")
	s, err := Decode(strings.NewReader(wire))
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := s.Blob("a/b.bin"); !ok || !bytes.Equal(got, big) {
		t.Errorf("blob a/b.bin = %x, %v", got, ok)
	}
	if got, ok := s.Blob("empty"); !ok || len(got) != 0 {
		t.Errorf("blob empty = %x, %v", got, ok)
	}
	if m := s.Marks(); len(m) != 2 || m[0] != "hello world" || !s.HasMark(MarkPoweroff) {
		t.Errorf("marks = %q", m)
	}
	if err := s.GuestError(); err != nil {
		t.Errorf("GuestError = %v", err)
	}
}

func TestGuestError(t *testing.T) {
	var buf bytes.Buffer
	NewEncoder(&buf).Mark("error kexec: permission denied")
	s, err := Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.GuestError(); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("GuestError = %v", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	sum := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" // sha256("")
	for _, tc := range []struct {
		name, in  string
		truncated bool
	}{
		{"truncated", Prefix + "MARK x\n" + Prefix + "BEGIN a 3 " + sum + "\nAAAA\n", true},
		{"bad-len", Prefix + "BEGIN a -1 " + sum + "\n", false},
		{"huge-len", Prefix + "BEGIN a 999999999999 " + sum + "\n", false},
		{"short-header", Prefix + "BEGIN a 3\n", false},
		{"wrong-sum", Prefix + "BEGIN a 0 " + strings.Repeat("0", 64) + "\n" + Prefix + "END a\n", false},
		{"wrong-end", Prefix + "BEGIN a 0 " + sum + "\n" + Prefix + "END b\n", false},
		{"too-much-data", Prefix + "BEGIN a 0 " + sum + "\nAAAA\n" + Prefix + "END a\n", false},
		{"unknown-verb", Prefix + "FOO\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(tc.in))
			if err == nil {
				t.Fatal("no error")
			}
			var se *SyntaxError
			if tc.truncated != errors.Is(err, ErrTruncated) || (!tc.truncated && !errors.As(err, &se)) {
				t.Errorf("err = %v (%T)", err, err)
			}
		})
	}
}

func TestBadName(t *testing.T) {
	if err := NewEncoder(&bytes.Buffer{}).Blob("a b", nil); err == nil {
		t.Error("name with a space accepted")
	}
}
