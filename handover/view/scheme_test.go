package view

import (
	"errors"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// A segment whose manifest entry names an unknown extend scheme stops the index with a
// TamperError naming the segment; it is never rendered with a guessed scheme. The same
// segment with its recorded scheme indexes, so the error comes from the scheme alone.
func TestViewRefusesUnknownScheme(t *testing.T) {
	e := newEnv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(20)
	e.drain(handover.BackendStaged)
	s, err := handover.OpenStore(e.store)
	if err != nil {
		t.Fatal(err)
	}
	segs := s.ChainSegments()
	if len(segs) == 0 {
		t.Fatal("no segment stored")
	}
	v := &View{o: Options{IndexEvery: 16}}
	sg := segs[0]
	if err := v.index(&chain{}, s, sg); err != nil {
		t.Fatalf("index the stored segment: %v", err)
	}
	sg.Scheme = "hash-ish"
	err = v.index(&chain{}, s, sg)
	var te *handover.TamperError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "segment 1") || !strings.Contains(err.Error(), `"hash-ish"`) {
		t.Fatalf("index a segment of scheme %q: %v, want a TamperError naming segment 1 and the scheme", sg.Scheme, err)
	}
	for _, c := range []struct {
		s    handover.Scheme
		want serialize.Scheme
	}{{handover.SchemeHash, serialize.SchemeHash}, {handover.SchemePad, serialize.SchemePad}} {
		sg.Scheme = c.s
		if got, err := segmentScheme(&sg); err != nil || got != c.want {
			t.Errorf("scheme %q: %v, %v; want %v", c.s, got, err, c.want)
		}
	}
}
