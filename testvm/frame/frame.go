// Package frame is the text framing used on a test VM's data port (ttyS1).
//
// A serial port is the one channel that works with every test kernel (the
// Debian cloud kernel has no 9p, and virtio needs modules), but it is a byte
// stream that the guest's tty layer may alter (ONLCR turns "\n" into "\r\n").
// The framing is therefore line-based ASCII that survives that:
//
//	@@TESTVM MARK <text>
//	@@TESTVM BEGIN <name> <len> <sha256-hex>
//	<base64, at most 76 characters a line>
//	@@TESTVM END <name>
//
// Lines that do not start with the prefix outside a blob are ignored, "\r" is
// stripped, and a blob is only accepted when its length and SHA-256 match.
// The guest writes with an [Encoder]; the host reads with [Decode].
package frame

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Prefix starts every framing line.
const Prefix = "@@TESTVM "

// Conventional marks written by the guest library; hosts look for them.
const (
	// MarkPoweroff is the last mark of a guest that finished normally.
	MarkPoweroff = "poweroff"
	// MarkError starts a mark that reports a guest-side failure: "error <msg>".
	MarkError = "error"
)

// MaxBlob bounds the size a BEGIN line may declare, so a corrupted header
// cannot make the decoder allocate without limit.
const MaxBlob = 64 << 20

const lineLen = 76

// Encoder writes frames to a data port.
type Encoder struct {
	w io.Writer
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Mark writes one text mark. Newlines in text are replaced by spaces.
func (e *Encoder) Mark(text string) error {
	text = strings.NewReplacer("\r", " ", "\n", " ").Replace(text)
	_, err := io.WriteString(e.w, Prefix+"MARK "+text+"\n")
	return err
}

// Blob writes data as a named blob. The name must be non-empty and must not
// contain whitespace.
func (e *Encoder) Blob(name string, data []byte) error {
	if err := checkName(name); err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	var b strings.Builder
	fmt.Fprintf(&b, "%sBEGIN %s %d %s\n", Prefix, name, len(data), hex.EncodeToString(sum[:]))
	s := base64.StdEncoding.EncodeToString(data)
	for len(s) > 0 {
		n := min(len(s), lineLen)
		b.WriteString(s[:n])
		b.WriteByte('\n')
		s = s[n:]
	}
	fmt.Fprintf(&b, "%sEND %s\n", Prefix, name)
	_, err := io.WriteString(e.w, b.String())
	return err
}

func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, " \t\r\n") {
		return fmt.Errorf("frame: invalid blob name %q", name)
	}
	return nil
}

// Kind tells marks from blobs.
type Kind int

const (
	KindMark Kind = iota + 1
	KindBlob
)

// Frame is one decoded mark or blob.
type Frame struct {
	Kind Kind
	Text string // mark text (KindMark)
	Name string // blob name (KindBlob)
	Data []byte // blob contents (KindBlob)
	Line int    // 1-based line of the MARK or BEGIN line
}

// Stream is everything decoded from one data port.
type Stream struct {
	Frames []Frame
}

// Marks returns the text of every mark, in order.
func (s *Stream) Marks() []string {
	var out []string
	for _, f := range s.Frames {
		if f.Kind == KindMark {
			out = append(out, f.Text)
		}
	}
	return out
}

// HasMark reports whether a mark equal to text was received.
func (s *Stream) HasMark(text string) bool {
	for _, f := range s.Frames {
		if f.Kind == KindMark && f.Text == text {
			return true
		}
	}
	return false
}

// Blob returns the last blob called name.
func (s *Stream) Blob(name string) ([]byte, bool) {
	for i := len(s.Frames) - 1; i >= 0; i-- {
		if f := s.Frames[i]; f.Kind == KindBlob && f.Name == name {
			return f.Data, true
		}
	}
	return nil, false
}

// Blobs returns every blob, in order.
func (s *Stream) Blobs() []Frame {
	var out []Frame
	for _, f := range s.Frames {
		if f.Kind == KindBlob {
			out = append(out, f)
		}
	}
	return out
}

// GuestError returns the text of the first "error ..." mark as an error, or
// nil if the guest reported none.
func (s *Stream) GuestError() error {
	for _, f := range s.Frames {
		if f.Kind == KindMark && (f.Text == MarkError || strings.HasPrefix(f.Text, MarkError+" ")) {
			return fmt.Errorf("guest: %s", strings.TrimSpace(strings.TrimPrefix(f.Text, MarkError)))
		}
	}
	return nil
}

// ErrTruncated is returned (wrapped) when the stream ends inside a blob, as
// it does when the guest dies while writing.
var ErrTruncated = errors.New("frame: stream ends inside a blob")

// SyntaxError describes a malformed framing line.
type SyntaxError struct {
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("frame: line %d: %s", e.Line, e.Msg) }

// Decode reads r to the end. It returns the frames decoded so far together
// with the first error, so a truncated stream still yields its complete
// frames.
func Decode(r io.Reader) (*Stream, error) {
	s := &Stream{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	var (
		line   int
		inBlob bool
		cur    Frame
		want   int
		sum    []byte
		b64    bytes.Buffer
	)
	for sc.Scan() {
		line++
		text := strings.TrimRight(sc.Text(), "\r")
		text = strings.ReplaceAll(text, "\r", "")
		if inBlob {
			if rest, ok := strings.CutPrefix(text, Prefix+"END "); ok {
				if rest != cur.Name {
					return s, &SyntaxError{line, fmt.Sprintf("END %q inside blob %q", rest, cur.Name)}
				}
				data, err := base64.StdEncoding.DecodeString(b64.String())
				if err != nil {
					return s, &SyntaxError{cur.Line, fmt.Sprintf("blob %q: %v", cur.Name, err)}
				}
				if len(data) != want {
					return s, &SyntaxError{cur.Line, fmt.Sprintf("blob %q: got %d bytes, header says %d", cur.Name, len(data), want)}
				}
				if got := sha256.Sum256(data); !bytes.Equal(got[:], sum) {
					return s, &SyntaxError{cur.Line, fmt.Sprintf("blob %q: sha256 mismatch", cur.Name)}
				}
				cur.Data = data
				s.Frames = append(s.Frames, cur)
				inBlob = false
				b64.Reset()
				continue
			}
			if strings.HasPrefix(text, Prefix) {
				return s, &SyntaxError{line, fmt.Sprintf("framing line inside blob %q", cur.Name)}
			}
			if b64.Len()+len(text) > base64.StdEncoding.EncodedLen(want) {
				return s, &SyntaxError{line, fmt.Sprintf("blob %q: more data than the declared %d bytes", cur.Name, want)}
			}
			b64.WriteString(strings.TrimSpace(text))
			continue
		}
		rest, ok := strings.CutPrefix(text, Prefix)
		if !ok {
			continue
		}
		verb, arg, _ := strings.Cut(rest, " ")
		switch verb {
		case "MARK":
			s.Frames = append(s.Frames, Frame{Kind: KindMark, Text: arg, Line: line})
		case "BEGIN":
			f := strings.Fields(arg)
			if len(f) != 3 {
				return s, &SyntaxError{line, "BEGIN wants <name> <len> <sha256>"}
			}
			n, err := strconv.Atoi(f[1])
			if err != nil || n < 0 || n > MaxBlob {
				return s, &SyntaxError{line, fmt.Sprintf("bad blob length %q", f[1])}
			}
			h, err := hex.DecodeString(f[2])
			if err != nil || len(h) != sha256.Size {
				return s, &SyntaxError{line, fmt.Sprintf("bad sha256 %q", f[2])}
			}
			cur = Frame{Kind: KindBlob, Name: f[0], Line: line}
			want, sum, inBlob = n, h, true
		default:
			return s, &SyntaxError{line, fmt.Sprintf("unknown verb %q", verb)}
		}
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("frame: read: %w", err)
	}
	if inBlob {
		return s, fmt.Errorf("blob %q from line %d: %w", cur.Name, cur.Line, ErrTruncated)
	}
	return s, nil
}
