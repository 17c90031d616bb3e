package view

import (
	"fmt"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/serialize"
)

// renderer renders records in one format with serialize's writers (the one implementation
// of the kernel's list formats), appending to a byte slice.
type renderer struct {
	f    Format
	dg   *serialize.Digester
	sink sink
	bw   *serialize.BinaryWriter
	aw   *serialize.ASCIIWriter
}

type sink struct{ b []byte }

func (s *sink) Write(p []byte) (int, error) { s.b = append(s.b, p...); return len(p), nil }

func newRenderer(f Format) *renderer {
	r := &renderer{f: f, dg: serialize.NewDigester()}
	if f.Kind == ASCII {
		r.aw = serialize.NewASCIIWriter(&r.sink, handover.StoreOrder, f.Bank, r.dg)
	} else {
		r.bw = serialize.NewBinaryWriter(&r.sink, handover.StoreOrder, f.Bank, r.dg)
	}
	return r
}

// setScheme sets the extend scheme of the kernel that measured the next records (the
// digests of banks other than SHA1 follow it).
func (r *renderer) setScheme(sc serialize.Scheme) { r.dg.Scheme = sc }

// segmentScheme is the extend scheme a segment's manifest entry records; an unknown one is
// a tampered manifest and stops the read (never a guessed default).
func segmentScheme(sg *handover.Segment) (serialize.Scheme, error) {
	sc, err := sg.Scheme.Extend()
	if err != nil {
		return 0, &handover.TamperError{File: "manifest.jsonl", What: fmt.Sprintf("segment %d: %v", sg.Number, err)}
	}
	return sc, nil
}

// append renders rec after b and returns the extended slice.
func (r *renderer) append(b []byte, rec *serialize.Record) ([]byte, error) {
	r.sink.b = b
	var err error
	if r.aw != nil {
		if err = r.aw.Write(rec); err == nil {
			err = r.aw.Flush()
		}
	} else {
		if err = r.bw.Write(rec); err == nil {
			err = r.bw.Flush()
		}
	}
	b = r.sink.b
	r.sink.b = nil
	return b, err
}

// write renders rec into the writer's buffer; flush appends what was written to b. Many
// writes and one flush cost less than an append per record.
func (r *renderer) write(rec *serialize.Record) error {
	if r.aw != nil {
		return r.aw.Write(rec)
	}
	return r.bw.Write(rec)
}

func (r *renderer) flush(b []byte) ([]byte, error) {
	r.sink.b = b
	var err error
	if r.aw != nil {
		err = r.aw.Flush()
	} else {
		err = r.bw.Flush()
	}
	b = r.sink.b
	r.sink.b = nil
	return b, err
}
