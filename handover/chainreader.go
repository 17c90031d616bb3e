package handover

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/imakexec/imakexec/serialize"
)

// Reading the chain back: segment after segment, each checked against its manifest entry.

// ChainReader streams the chain's records in order, segment after segment, checking each
// segment file's size, SHA-256 and record count against the manifest as it goes. It
// implements serialize.Source; records are valid until the next call.
type ChainReader struct {
	s    *Store
	segs []Segment
	i    int
	f    *os.File
	hr   *hashingReader
	kr   *serialize.KexecReader
	n    uint64
	seq  uint64
	err  error
	all  bool // duplicate segments included: no sequence continuity
	// single reads one segment on its own: no numbering or continuity checks.
	single bool
}

// Reader returns a reader over every record of the chain. Close it when done.
func (s *Store) Reader() *ChainReader { return &ChainReader{s: s, segs: s.ChainSegments(), i: -1} }

// allReader reads every segment file, duplicate segments included (Check).
func (s *Store) allReader() *ChainReader {
	return &ChainReader{s: s, segs: s.Segments(), i: -1, all: true}
}

// Segment is the segment of the record last returned.
func (c *ChainReader) Segment() *Segment {
	if c.i < 0 || c.i >= len(c.segs) {
		return nil
	}
	return &c.segs[c.i]
}

// Seq is the global sequence number of the record last returned.
func (c *ChainReader) Seq() uint64 { return c.seq }

// Next returns the next record, or io.EOF after the last one.
func (c *ChainReader) Next() (*serialize.Record, error) {
	if c.err != nil {
		return nil, c.err
	}
	for {
		if c.kr == nil {
			c.i++
			if c.i >= len(c.segs) {
				c.err = io.EOF
				return nil, io.EOF
			}
			if err := c.open(); err != nil {
				c.err = err
				return nil, err
			}
		}
		rec, err := c.kr.Next()
		if err == io.EOF {
			if err := c.finish(); err != nil {
				c.err = err
				return nil, err
			}
			continue
		}
		sg := &c.segs[c.i]
		if err != nil {
			c.err = &TamperError{File: sg.File, What: fmt.Sprintf("segment %d does not parse: %v", sg.Number, err)}
			return nil, c.err
		}
		c.seq = sg.FirstSeq + c.n
		c.n++
		if c.n&4095 == 0 && c.s.ctx != nil {
			if err := c.s.ctx.Err(); err != nil {
				c.err = fmt.Errorf("read the store: %w", err)
				return nil, c.err
			}
		}
		return rec, nil
	}
}

func (c *ChainReader) open() error {
	sg := &c.segs[c.i]
	prevNum, prevEnd := 0, uint64(0)
	for j := c.i - 1; j >= 0; j-- {
		if c.segs[j].InChain() || c.all {
			prevNum = c.segs[j].Number
			break
		}
	}
	for j := c.i - 1; j >= 0; j-- {
		if c.segs[j].InChain() {
			prevEnd = c.segs[j].End()
			break
		}
	}
	badNum := sg.Number <= prevNum || (c.all && sg.Number != c.i+1)
	if !c.single && (badNum || (sg.InChain() && sg.FirstSeq != prevEnd)) {
		return &TamperError{File: manifestName, What: fmt.Sprintf("segment %d (#%d in the manifest) does not continue the chain", sg.Number, c.i+1)}
	}
	if filepath.Clean(sg.File) != segmentName(sg.Number) {
		return &TamperError{File: manifestName, What: fmt.Sprintf("segment %d names file %q, want %q", sg.Number, sg.File, segmentName(sg.Number))}
	}
	f, err := openStoreFile(c.s.dir, sg.File)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d is missing", sg.Number)}
		}
		if errors.Is(err, ErrUnsafeStore) {
			return &TamperError{File: sg.File, What: err.Error()}
		}
		return fmt.Errorf("store: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if fi.Size() != sg.Size {
		f.Close()
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d has %d bytes, manifest says %d", sg.Number, fi.Size(), sg.Size)}
	}
	c.f = f
	c.hr = &hashingReader{r: f, h: sha256.New()}
	kr, err := serialize.NewKexecReader(bufio.NewReaderSize(c.hr, 256<<10), storeOrder)
	if err != nil {
		c.close()
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d: %v", sg.Number, err)}
	}
	if kr.Header.Count != sg.Count {
		c.close()
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d holds %d records, manifest says %d", sg.Number, kr.Header.Count, sg.Count)}
	}
	c.kr = kr
	c.n = 0
	return nil
}

func (c *ChainReader) finish() error {
	sg := &c.segs[c.i]
	// Read any bytes after the buffer so the hash covers the whole file.
	if _, err := io.Copy(io.Discard, c.hr); err != nil {
		c.close()
		return err
	}
	sum := hex.EncodeToString(c.hr.h.Sum(nil))
	c.close()
	if sum != sg.SHA256 {
		return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d SHA-256 is %.16s…, manifest says %.16s…", sg.Number, sum, sg.SHA256)}
	}
	return nil
}

func (c *ChainReader) close() {
	if c.f != nil {
		c.f.Close()
	}
	c.f, c.kr, c.hr = nil, nil, nil
}

// Close releases the open segment file.
func (c *ChainReader) Close() error { c.close(); return nil }

type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}
