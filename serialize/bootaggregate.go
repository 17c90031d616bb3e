package serialize

import (
	"bytes"
	"fmt"
)

// BootAggregateName is the event name of the record IMA adds when it starts (ima_add_boot_aggregate).
const BootAggregateName = "boot_aggregate"

// IsBootAggregate reports whether rec is a boot_aggregate record.
func IsBootAggregate(rec *Record, order ByteOrder) bool {
	return EventName(rec, order) == BootAggregateName
}

// BootAggregate computes the boot_aggregate value for a bank from its PCR values
// (ima_calc_boot_aggregate; docs/kernel.md, "boot_aggregate"): the bank's hash over PCR 0-7, plus PCR 8-9 for banks
// other than SHA1 (5.8+; scheme pad gives the ≤5.7 value, SHA1 over PCR 0-7). Missing PCRs
// count as zero.
func BootAggregate(bank Bank, pcrs PCRValues, scheme Scheme) ([]byte, error) {
	if bank.hash == 0 {
		return nil, fmt.Errorf("%w: boot_aggregate needs a hash for bank %s", ErrUnknownBank, bank.Name)
	}
	n := uint32(8)
	if bank.Name != SHA1.Name && scheme == SchemeHash {
		n = 10
	}
	var in []byte
	for p := uint32(0); p < n; p++ {
		v := pcrs.Get(p, bank.Name)
		if v == nil {
			v = make([]byte, bank.Size)
		}
		if len(v) != bank.Size {
			return nil, fmt.Errorf("PCR %d bank %s has %d bytes", p, bank.Name, len(v))
		}
		in = append(in, v...)
	}
	out := make([]byte, bank.Size)
	bank.sum(out, in)
	return out, nil
}

// BootAggregateError says why a boot_aggregate record does not match the TPM.
type BootAggregateError struct {
	Record   int // index in the log
	Bank     string
	Logged   []byte
	Expected []byte
}

func (e *BootAggregateError) Error() string {
	return fmt.Sprintf("boot_aggregate record %d: logged %s:%x, PCRs 0-9 of the TPM give %x", e.Record, e.Bank, e.Logged, e.Expected)
}

func (e *BootAggregateError) Unwrap() error { return ErrMismatch }

// CheckBootAggregate checks a boot_aggregate record against the TPM's PCR values in the bank
// its digest field names (d-ng "sha256:…"; the `ima` template's d is SHA1 over PCR 0-7).
// index is the record's position, for the error.
func CheckBootAggregate(rec *Record, index int, pcrs PCRValues, scheme Scheme, order ByteOrder) error {
	fields, err := ParseFields(rec, order)
	if err != nil {
		return err
	}
	bank, logged := SHA1, []byte(nil)
	switch {
	case len(fields) > 0 && fields[0].ID == FieldD:
		logged = fields[0].Data
	case len(fields) > 0 && (fields[0].ID == FieldDNG || fields[0].ID == FieldDNGv2):
		prefix, d, err := ParseDigestField(fields[0].Data)
		if err != nil {
			return err
		}
		if i := bytes.LastIndexByte([]byte(prefix), ':'); i >= 0 {
			prefix = prefix[i+1:] // "ima:sha256" -> "sha256"
		}
		if bank, err = ParseBank(prefix); err != nil {
			return err
		}
		logged = d
	default:
		return fmt.Errorf("%w: boot_aggregate record %d has no digest field", ErrFormat, index)
	}
	if isZero(logged) {
		// No TPM (or no usable bank) when IMA started: nothing to check against.
		return fmt.Errorf("%w: boot_aggregate record %d is all zero: the kernel found no TPM bank for it", ErrMismatch, index)
	}
	want, err := BootAggregate(bank, pcrs, scheme)
	if err != nil {
		return err
	}
	if !bytes.Equal(want, logged) {
		return &BootAggregateError{Record: index, Bank: bank.Name, Logged: bytes.Clone(logged), Expected: want}
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
