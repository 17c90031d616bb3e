package handover

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/imakexec/imakexec/serialize"
)

// The full store check behind imakexec status and verify.

// CheckResult summarises a full store check.
type CheckResult struct {
	Segments int
	Records  uint64
	Bytes    int64
	PCRs     serialize.PCRValues // replayed values after the last segment
}

// Check verifies the whole store without a TPM: the manifest chain (already checked when
// read), every segment file (present, regular, size, SHA-256, record count, sequence
// continuity), the boot hashes, and a replay that reproduces every segment's recorded PCR
// values. Any difference is a *TamperError naming the file, line or segment. It does not
// say the chain matches the TPM; verify does that.
func (s *Store) Check() (*CheckResult, error) {
	res := &CheckResult{PCRs: serialize.PCRValues{}}
	h := s.Header()
	if h == nil {
		return res, nil
	}
	banks, err := headerBanks(h)
	if err != nil {
		return nil, err
	}
	segs := s.Segments()
	lineOf := map[int]int{}
	for _, e := range s.entries {
		if e.Segment != nil {
			lineOf[e.Segment.Number] = e.Index + 1
		}
	}
	cr := s.allReader()
	defer cr.Close()
	var (
		rp      *serialize.Replayer
		bh      *bootHasher
		cur     = -1
		prevPCR = serialize.PCRValues{}
		buf     []byte
		dg      = serialize.NewDigester()
		bootEnd = map[string]uint64{}
		bootSt  = map[string]string{}
		// sums[boot][end] is the boot hash sum of that boot's records [0, end).
		sums = map[string]map[uint64]string{}
	)
	endSeg := func(i int) error {
		sg := &segs[i]
		if bh.sum() != sg.BootSum || bh.state() != sg.BootHash {
			return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d boot hash differs from the manifest (line %d)", sg.Number, lineOf[sg.Number])}
		}
		end := sg.Boot.FirstIndex + sg.Count
		bootEnd[sg.Boot.BootID] = end
		bootSt[sg.Boot.BootID] = sg.BootHash
		if sums[sg.Boot.BootID] == nil {
			sums[sg.Boot.BootID] = map[uint64]string{0: hex.EncodeToString(sha256.New().Sum(nil))}
		}
		sums[sg.Boot.BootID][end] = sg.BootSum
		res.Segments++
		res.Bytes += sg.Size
		if d := sg.Duplicates; d != nil {
			// A carried head from index 0 must hash like the old kernel's stored list.
			if want, ok := sums[d.BootID][d.To]; d.From == 0 && ok && want != sg.BootSum {
				return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d does not repeat records [0,%d) of boot %s as it claims (line %d)", sg.Number, d.To, d.BootID, lineOf[sg.Number])}
			}
			return nil
		}
		got := rp.State()
		want, err := decodePCRs(sg.PCRs)
		if err != nil {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: err.Error()}
		}
		if !pcrsEqual(got, want) {
			return &TamperError{File: sg.File, What: fmt.Sprintf("segment %d replays to PCR values other than the manifest records (line %d)", sg.Number, lineOf[sg.Number])}
		}
		prevPCR = got
		return nil
	}
	startSeg := func(i int) error {
		sg := &segs[i]
		if end, ok := bootEnd[sg.Boot.BootID]; ok && sg.Boot.FirstIndex != end {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: fmt.Sprintf("segment %d starts at index %d of boot %s, the previous one ended at %d", sg.Number, sg.Boot.FirstIndex, sg.Boot.BootID, end)}
		}
		var err error
		if bh, err = newBootHasher(bootSt[sg.Boot.BootID]); err != nil {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: err.Error()}
		}
		rp = nil
		if !sg.InChain() {
			return nil
		}
		scheme, err := sg.Scheme.Extend()
		if err != nil {
			return &TamperError{File: manifestName, Line: lineOf[sg.Number], What: err.Error()}
		}
		rp, err = serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Scheme: scheme, Order: storeOrder, Start: prevPCR, DigestBank: &serialize.SHA1})
		return err
	}
	for {
		rec, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if cr.i != cur {
			if cur >= 0 {
				if err := endSeg(cur); err != nil {
					return nil, err
				}
			}
			// empty segments are not written, so every segment yields a record
			cur = cr.i
			if err := startSeg(cur); err != nil {
				return nil, err
			}
		}
		if rp != nil {
			if err := rp.Add(rec); err != nil {
				return nil, &TamperError{File: segs[cur].File, What: fmt.Sprintf("record %d: %v", cr.n-1, err)}
			}
			res.Records++
		}
		if buf, err = serialize.AppendKexecRecord(buf[:0], rec, dg, storeOrder); err != nil {
			return nil, err
		}
		bh.h.Write(buf)
	}
	if cur >= 0 {
		if err := endSeg(cur); err != nil {
			return nil, err
		}
	}
	if res.Segments != len(segs) {
		return nil, &TamperError{File: manifestName, What: fmt.Sprintf("%d segments checked of %d", res.Segments, len(segs))}
	}
	res.PCRs = prevPCR
	return res, nil
}

func pcrsEqual(a, b serialize.PCRValues) bool {
	if len(a) != len(b) {
		return false
	}
	for p, m := range a {
		if len(m) != len(b[p]) {
			return false
		}
		for bank, v := range m {
			if hex.EncodeToString(v) != hex.EncodeToString(b[p][bank]) {
				return false
			}
		}
	}
	return true
}

// headerBanks parses the banks the manifest header lists: the banks the store's recorded
// PCR values are in. They are a hint (what a verdict compares comes from the TPM); a bank
// name that does not parse is tampering.
func headerBanks(h *Header) ([]serialize.Bank, error) {
	var out []serialize.Bank
	for _, n := range h.Banks {
		b, err := serialize.ParseBank(n)
		if err != nil {
			return nil, &TamperError{File: manifestName, Line: 1, What: err.Error()}
		}
		out = append(out, b)
	}
	return out, nil
}
