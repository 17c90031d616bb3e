package handover

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/imakexec/imakexec/serialize"
)

// DefaultTPM is the TPM resource manager device the CLI opens by default.
const DefaultTPM = "/dev/tpmrm0"

// ErrNoTPM is returned when the TPM cannot be opened; without a TPM nothing imakexec stores
// can be verified.
var ErrNoTPM = errors.New("no TPM")

// OpenTPM opens a TPM: a character device path (default /dev/tpmrm0), or "unix:PATH" for a
// Unix socket that speaks raw TPM 2.0 commands, one connection per command (what
// `imakexec sim` and `swtpm socket --server type=unixio` serve).
func OpenTPM(spec string) (transport.TPMCloser, error) {
	if spec == "" {
		spec = DefaultTPM
	}
	var (
		t   transport.TPMCloser
		err error
	)
	if p, ok := strings.CutPrefix(spec, "unix:"); ok {
		t, err = linuxudstpm.Open(p)
	} else {
		t, err = linuxtpm.Open(spec)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrNoTPM, spec, err)
	}
	return t, nil
}

// ReadClock returns the TPM's resetCount and restartCount (TPM2_ReadClock, TPMS_CLOCK_INFO).
// resetCount changes at every TPM Reset (cold boot): PCRs start again from zero, so a store
// bound to another resetCount describes a different power cycle. restartCount changes at
// TPM Restart and Resume (hibernation, S3); it is recorded, not bound to.
func ReadClock(t transport.TPM) (resetCount, restartCount uint32, err error) {
	rsp, err := tpm2.ReadClock{}.Execute(t)
	if err != nil {
		return 0, 0, fmt.Errorf("TPM2_ReadClock: %w", err)
	}
	ci := rsp.CurrentTime.ClockInfo
	return ci.ResetCount, ci.RestartCount, nil
}

// BankAllocation is one PCR bank of the TPM and the PCRs allocated in it.
type BankAllocation struct {
	Bank serialize.Bank
	// PCRs[i] reports whether PCR i is allocated in this bank.
	PCRs [serialize.MaxPCR]bool
	// Err is set for an algorithm this package does not know the digest size of.
	Err error
	Alg uint16
}

// Any reports whether the bank has at least one PCR allocated.
func (a *BankAllocation) Any() bool { return slices.Contains(a.PCRs[:], true) }

// PCRAllocation returns the TPM's PCR banks and the PCRs allocated in each
// (TPM2_GetCapability TPM_CAP_PCRS), in the TPM's order. The kernel learns its banks the same
// way (tpm2_get_pcr_allocation) and extends every allocated bank for every record
// (ima_pcr_extend -> tpm_pcr_extend, 7.2), so this, not the store, says what a verdict
// compares.
func PCRAllocation(t transport.TPM) ([]BankAllocation, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, PropertyCount: 1}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability(PCRS): %w", err)
	}
	sel, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability(PCRS): %w", err)
	}
	var out []BankAllocation
	for _, s := range sel.PCRSelections {
		a := BankAllocation{Alg: uint16(s.Hash)}
		for byteI, bits := range s.PCRSelect {
			for bit := 0; bit < 8; bit++ {
				if p := byteI*8 + bit; bits&(1<<bit) != 0 && p < serialize.MaxPCR {
					a.PCRs[p] = true
				}
			}
		}
		a.Bank, a.Err = serialize.BankByTPMAlg(uint16(s.Hash), 0)
		out = append(out, a)
	}
	return out, nil
}

// ActiveBanks returns the TPM's PCR banks that have at least one PCR allocated, in the
// TPM's order; algorithms of unknown digest size are left out.
func ActiveBanks(t transport.TPM) ([]serialize.Bank, error) {
	alloc, err := PCRAllocation(t)
	if err != nil {
		return nil, err
	}
	var out []serialize.Bank
	for _, a := range alloc {
		if a.Any() && a.Err == nil {
			out = append(out, a.Bank)
		}
	}
	return out, nil
}

// ReadPCRs reads the given PCRs in the given banks (TPM2_PCR_Read). The TPM returns at most
// eight digests per call, and may leave out any it likes; the loop asks again for what is
// missing until every value is read.
func ReadPCRs(t transport.TPM, banks []serialize.Bank, pcrs []uint32) (serialize.PCRValues, error) {
	out := serialize.PCRValues{}
	pending := map[uint16]map[uint32]bool{}
	for _, b := range banks {
		m := map[uint32]bool{}
		for _, p := range pcrs {
			if p >= serialize.MaxPCR {
				return nil, fmt.Errorf("read PCRs: PCR %d out of range", p)
			}
			m[p] = true
		}
		pending[b.TPMAlg] = m
	}
	bankOf := map[uint16]serialize.Bank{}
	for _, b := range banks {
		bankOf[b.TPMAlg] = b
	}
	for round := 0; ; round++ {
		var req tpm2.TPMLPCRSelection
		for _, b := range banks {
			m := pending[b.TPMAlg]
			if len(m) == 0 {
				continue
			}
			bm := make([]byte, 3)
			for p := range m {
				bm[p/8] |= 1 << (p % 8)
			}
			req.PCRSelections = append(req.PCRSelections, tpm2.TPMSPCRSelection{Hash: tpm2.TPMIAlgHash(b.TPMAlg), PCRSelect: bm})
		}
		if len(req.PCRSelections) == 0 {
			return out, nil
		}
		if round > 64 {
			return nil, fmt.Errorf("read PCRs: the TPM returns no more values")
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: req}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("TPM2_PCR_Read: %w", err)
		}
		vals := rsp.PCRValues.Digests
		i := 0
		got := 0
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			b, ok := bankOf[uint16(s.Hash)]
			if !ok {
				return nil, fmt.Errorf("TPM2_PCR_Read: unrequested bank 0x%04x", uint16(s.Hash))
			}
			for byteI, bits := range s.PCRSelect {
				for bit := 0; bit < 8; bit++ {
					if bits&(1<<bit) == 0 {
						continue
					}
					p := uint32(byteI*8 + bit)
					if i >= len(vals) {
						return nil, fmt.Errorf("TPM2_PCR_Read: selection names more PCRs than values returned")
					}
					if len(vals[i].Buffer) != b.Size {
						return nil, fmt.Errorf("TPM2_PCR_Read: PCR %d bank %s: %d bytes, want %d", p, b.Name, len(vals[i].Buffer), b.Size)
					}
					out.Set(p, b.Name, vals[i].Buffer)
					delete(pending[b.TPMAlg], p)
					i++
					got++
				}
			}
		}
		if got == 0 {
			return nil, fmt.Errorf("TPM2_PCR_Read: no value returned (bank or PCR not allocated?)")
		}
	}
}
