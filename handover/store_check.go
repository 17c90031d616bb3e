package handover

import (
	"fmt"
	"slices"

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

// Check verifies the whole store without a TPM, with the one chain verifier (walk) in the
// header's banks: the manifest chain (already checked when read), every segment file and
// every field of its entry, the boot hashes, and a replay that reproduces every segment's
// recorded PCR values. Any difference is a *TamperError naming the file, line or segment.
// It does not say the chain matches the TPM; verify does that.
func (s *Store) Check() (*CheckResult, error) {
	h := s.Header()
	if h == nil {
		return &CheckResult{PCRs: serialize.PCRValues{}}, nil
	}
	banks, err := headerBanks(h)
	if err != nil {
		return nil, err
	}
	_, res, err := s.walk(banks, nil)
	return res, err
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
		if b.Name == serialize.SM3.Name || slices.ContainsFunc(out, func(o serialize.Bank) bool { return o.Name == b.Name }) {
			return nil, &TamperError{File: manifestName, Line: 1, What: fmt.Sprintf("bank %s listed twice, or not one a drain replays", b.Name)}
		}
		out = append(out, b)
	}
	return out, nil
}
