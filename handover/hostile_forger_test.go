package handover

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/imakexec/imakexec/serialize"
)

// The attacker of the hostile-store suite (hostile_test.go): it edits a store and
// re-derives every derived field, so each case is a one-line mutation.

// forger is the attacker: the store's manifest entries and every segment's records, which a
// case edits; write re-derives everything derivable and writes the store back.
type forger struct {
	t       testing.TB
	dir     string
	entries []Entry
	recs    map[int][]serialize.Record // by segment number
	// post edits the entries after derivation (to set a derived field to a lie that the
	// attacker then chains with correct prev hashes).
	post func(f *forger)
}

func loadForger(t testing.TB, dir string) *forger {
	t.Helper()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &forger{t: t, dir: dir, recs: map[int][]serialize.Record{}}
	for _, e := range s.Entries() {
		e = cloneEntry(e)
		f.entries = append(f.entries, e)
		if e.Segment != nil {
			recs, err := readSegment(s, e.Segment)
			if err != nil {
				t.Fatal(err)
			}
			f.recs[e.Segment.Number] = recs
		}
	}
	return f
}

func cloneEntry(e Entry) Entry {
	if e.Header != nil {
		h := *e.Header
		h.Banks = append([]string(nil), h.Banks...)
		e.Header = &h
	}
	if e.Segment != nil {
		sg := *e.Segment
		if sg.Duplicates != nil {
			d := *sg.Duplicates
			sg.Duplicates = &d
		}
		e.Segment = &sg
	}
	if e.Deleted != nil {
		d := *e.Deleted
		e.Deleted = &d
	}
	if e.Join != nil {
		j := *e.Join
		e.Join = &j
	}
	return e
}

func (f *forger) header() *Header { return f.entries[0].Header }

// segs returns the segment entries in manifest order; chain the in-chain ones only.
func (f *forger) segs(chain bool) []*Segment {
	var out []*Segment
	for _, e := range f.entries {
		if e.Segment != nil && (!chain || e.Segment.InChain()) {
			out = append(out, e.Segment)
		}
	}
	return out
}

// seg is the i-th in-chain segment (negative: from the end).
func (f *forger) seg(i int) *Segment {
	s := f.segs(true)
	if i < 0 {
		i += len(s)
	}
	return s[i]
}

func (f *forger) deletions() []*Deletion {
	var out []*Deletion
	for _, e := range f.entries {
		if e.Deleted != nil {
			out = append(out, e.Deleted)
		}
	}
	return out
}

func (f *forger) joins() []*Join {
	var out []*Join
	for _, e := range f.entries {
		if e.Join != nil {
			out = append(out, e.Join)
		}
	}
	return out
}

// dup is the first duplicate segment, nil if none.
func (f *forger) dup() *Segment {
	for _, sg := range f.segs(false) {
		if !sg.InChain() {
			return sg
		}
	}
	return nil
}

// pcrsWithout drops a PCR from every segment's recorded values (after derivation).
func (f *forger) pcrsWithout(p uint32) {
	for _, sg := range f.segs(false) {
		m := pcrsMap(f.t, sg.PCRs)
		delete(m, fmt.Sprint(p))
		sg.PCRs = mapPCRs(m)
	}
}

// invent builds a record a real kernel never measured.
func invent(t testing.TB, pcr uint32, name string) serialize.Record {
	t.Helper()
	d := sha256.Sum256([]byte(name))
	rec, err := serialize.BuildRecord("ima-ng", serialize.Measured{PCR: pcr, Algo: "sha256", Digest: d[:], Name: name}, storeOrder)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// write re-derives and writes the store: each segment file from its records (count, size,
// SHA-256), first_seq along the chain, first_index and the boot hashes along each boot, the
// replayed pcrs in the header's banks with each segment's scheme, then post, then every
// line's index and prev hash.
func (f *forger) write() {
	t := f.t
	t.Helper()
	var banks []serialize.Bank
	for _, n := range f.header().Banks {
		if b, err := serialize.ParseBank(n); err == nil && b.Name != serialize.SM3.Name {
			banks = append(banks, b)
		}
	}
	rp, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Order: storeOrder})
	if err != nil {
		t.Fatal(err)
	}
	if len(banks) == 0 {
		rp = nil
	}
	var chainEnd uint64
	bootEnd := map[string]uint64{}
	bootState := map[string]string{}
	dg := serialize.NewDigester()
	for _, sg := range f.segs(false) {
		recs := f.recs[sg.Number]
		var body []byte
		bh, err := newBootHasher(bootState[sg.Boot.BootID])
		if err != nil {
			t.Fatal(err)
		}
		if sch, err := sg.Scheme.Extend(); err == nil && rp != nil {
			rp.SetScheme(sch)
		}
		for i := range recs {
			start := len(body)
			if body, err = serialize.AppendKexecRecord(body, &recs[i], dg, storeOrder); err != nil {
				t.Fatal(err)
			}
			bh.h.Write(body[start:])
			if sg.InChain() && rp != nil {
				rp.Add(&recs[i]) // a forged record may not replay; the verifier must say so
			}
		}
		data := serialize.AppendKexecHeader(nil, serialize.KexecHeader{Version: serialize.KexecVersion, BufferSize: uint64(serialize.KexecHeaderSize + len(body)), Count: uint64(len(recs))}, storeOrder)
		data = append(data, body...)
		sum := sha256.Sum256(data)
		sg.Count, sg.Size, sg.SHA256 = uint64(len(recs)), int64(len(data)), hex.EncodeToString(sum[:])
		sg.FirstSeq = chainEnd
		if sg.InChain() {
			chainEnd += sg.Count
		}
		sg.Boot.FirstIndex = bootEnd[sg.Boot.BootID]
		bootEnd[sg.Boot.BootID] += sg.Count
		sg.BootHash, sg.BootSum = bh.state(), bh.sum()
		bootState[sg.Boot.BootID] = sg.BootHash
		sg.PCRs = mapPCRs(map[string]map[string]string{})
		if rp != nil {
			sg.PCRs = pcrsJSON(rp.State())
		}
		if err := os.WriteFile(filepath.Join(f.dir, sg.File), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if f.post != nil {
		f.post(f)
	}
	var out []byte
	prev := ""
	for i := range f.entries {
		e := &f.entries[i]
		e.Index, e.Prev = i, prev
		line, err := encodeEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		prev = lineHash(line)
		out = append(append(out, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(f.dir, manifestName), out, 0o600); err != nil {
		t.Fatal(err)
	}
}
