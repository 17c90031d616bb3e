package kmodel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"

	"github.com/imakexec/imakexec/serialize"
)

// TPMDevice is the TPM the model kernel extends: raw TPM 2.0 commands, plus a power cycle
// for cold boots (TPM Reset: PCRs back to their reset values, resetCount up).
type TPMDevice interface {
	transport.TPM
	// PowerCycle performs TPM2_Shutdown(CLEAR), _TPM_Init and TPM2_Startup(CLEAR).
	PowerCycle() error
	Close() error
}

// lockedTPM serialises commands to the device: the model kernel, FUSE handlers, the unix
// socket server and production code in the same process all share one TPM.
type lockedTPM struct {
	mu  sync.Mutex
	dev TPMDevice
}

func (l *lockedTPM) Send(cmd []byte) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dev.Send(cmd)
}

func (l *lockedTPM) powerCycle() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dev.PowerCycle()
}

// simTPM is the Microsoft reference TPM of go-tpm-tools (cgo). Only one exists per process:
// OpenSimulator blocks until any other user has closed it.
type simTPM struct {
	sim *simulator.Simulator
}

// OpenSimulator opens the in-process TPM simulator (powered on and started). It allocates
// the sha1, sha256, sha384 and sha512 banks, all 24 PCRs.
func OpenSimulator() (TPMDevice, error) {
	sim, err := simulator.Get()
	if err != nil {
		return nil, fmt.Errorf("open TPM simulator: %w", err)
	}
	return &simTPM{sim: sim}, nil
}

func (s *simTPM) Send(cmd []byte) ([]byte, error) { return tpmutil.RunCommandRaw(s.sim, cmd) }
func (s *simTPM) PowerCycle() error               { return s.sim.Reset() }
func (s *simTPM) Close() error                    { return s.sim.Close() }

// TPM command codes and constants used by the raw fast path.
const (
	tpmSTSessions   = 0x8002
	tpmCCPCRExtend  = 0x00000182
	tpmRSPW         = 0x40000009
	tpmRCSuccess    = 0
	tpmHeaderLength = 10
)

// extender builds TPM2_PCR_Extend commands without reflection; one command per record
// extends every bank (as tpm_pcr_extend does for TPM 2.0; ima_pcr_extend).
type extender struct {
	buf []byte
}

// extend sends one PCR_Extend with a digest per bank. vals[i] is the value for banks[i].
func (e *extender) extend(t transport.TPM, pcr uint32, banks []serialize.Bank, vals [][]byte) error {
	b := e.buf[:0]
	b = binary.BigEndian.AppendUint16(b, tpmSTSessions)
	b = binary.BigEndian.AppendUint32(b, 0) // size, patched below
	b = binary.BigEndian.AppendUint32(b, tpmCCPCRExtend)
	b = binary.BigEndian.AppendUint32(b, pcr)
	// Authorization area: one password session with empty auth.
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, tpmRSPW)
	b = binary.BigEndian.AppendUint16(b, 0) // nonce
	b = append(b, 0)                        // session attributes
	b = binary.BigEndian.AppendUint16(b, 0) // hmac (password)
	b = binary.BigEndian.AppendUint32(b, uint32(len(banks)))
	for i, bank := range banks {
		b = binary.BigEndian.AppendUint16(b, bank.TPMAlg)
		b = append(b, vals[i][:bank.Size]...)
	}
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	e.buf = b
	rsp, err := t.Send(b)
	if err != nil {
		return err
	}
	if len(rsp) < tpmHeaderLength {
		return fmt.Errorf("PCR_Extend: short response of %d bytes", len(rsp))
	}
	if rc := binary.BigEndian.Uint32(rsp[6:]); rc != tpmRCSuccess {
		return fmt.Errorf("PCR_Extend PCR %d: TPM error 0x%x", pcr, rc)
	}
	return nil
}

// TPMBanks returns the PCR banks the TPM has allocated (with at least one PCR selected), in
// the TPM's order, as the kernel learns them from TPM2_GetCapability.
func TPMBanks(t transport.TPM) ([]serialize.Bank, error) {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapPCRs, Property: 0, PropertyCount: 1}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("get PCR banks: %w", err)
	}
	sels, err := rsp.CapabilityData.Data.AssignedPCR()
	if err != nil {
		return nil, fmt.Errorf("get PCR banks: %w", err)
	}
	var out []serialize.Bank
	for _, s := range sels.PCRSelections {
		used := false
		for _, v := range s.PCRSelect {
			used = used || v != 0
		}
		if !used {
			continue
		}
		b, err := serialize.BankByTPMAlg(uint16(s.Hash), 0)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, errors.New("TPM has no allocated PCR bank")
	}
	return out, nil
}

// ReadPCRs reads the given PCRs in the given banks. TPM2_PCR_Read returns at most 8 digests
// per call, so it loops until every requested value arrived.
func ReadPCRs(t transport.TPM, banks []serialize.Bank, pcrs []uint32) (serialize.PCRValues, error) {
	out := serialize.PCRValues{}
	want := map[uint16]map[uint32]bool{}
	for _, b := range banks {
		want[b.TPMAlg] = map[uint32]bool{}
		for _, p := range pcrs {
			want[b.TPMAlg][p] = true
		}
	}
	name := map[uint16]string{}
	for _, b := range banks {
		name[b.TPMAlg] = b.Name
	}
	for rounds := 0; ; rounds++ {
		var sel tpm2.TPMLPCRSelection
		for _, b := range banks {
			var ps []uint
			for p := range want[b.TPMAlg] {
				ps = append(ps, uint(p))
			}
			if len(ps) == 0 {
				continue
			}
			sel.PCRSelections = append(sel.PCRSelections, tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgID(b.TPMAlg), PCRSelect: tpm2.PCClientCompatible.PCRs(ps...)})
		}
		if len(sel.PCRSelections) == 0 {
			return out, nil
		}
		if rounds > 64 {
			return nil, errors.New("PCR_Read makes no progress")
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("PCR_Read: %w", err)
		}
		i := 0
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			for byteI, v := range s.PCRSelect {
				for bit := 0; bit < 8; bit++ {
					if v&(1<<bit) == 0 {
						continue
					}
					if i >= len(rsp.PCRValues.Digests) {
						return nil, errors.New("PCR_Read: fewer digests than selected")
					}
					p := uint32(byteI*8 + bit)
					out.Set(p, name[uint16(s.Hash)], rsp.PCRValues.Digests[i].Buffer)
					delete(want[uint16(s.Hash)], p)
					i++
				}
			}
		}
		if i == 0 {
			return nil, errors.New("PCR_Read returned no digest")
		}
	}
}

// ResetCount reads the TPM's resetCount (TPM2_ReadClock), which a cold boot increments.
func ResetCount(t transport.TPM) (uint32, error) {
	rsp, err := tpm2.ReadClock{}.Execute(t)
	if err != nil {
		return 0, fmt.Errorf("ReadClock: %w", err)
	}
	return rsp.CurrentTime.ClockInfo.ResetCount, nil
}
