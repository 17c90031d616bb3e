package serialize

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Sentinel errors; every error this package returns for bad input wraps one of them.
var (
	// ErrFormat: the input is not a well-formed list, buffer or field.
	ErrFormat = errors.New("malformed input")
	// ErrTruncated: the input ends inside a record or header.
	ErrTruncated = errors.New("truncated input")
	// ErrLimit: a length field exceeds a limit of this package or of the kernel.
	ErrLimit = errors.New("length exceeds limit")
	// ErrUnknownTemplate: a template name or field ID the kernel would not know.
	ErrUnknownTemplate = errors.New("unknown template")
	// ErrUnknownBank: a bank or algorithm this package cannot handle.
	ErrUnknownBank = errors.New("unknown or unsupported bank")
	// ErrDigestMismatch: a record's stored template digest differs from the digest of its data.
	ErrDigestMismatch = errors.New("template digest does not match template data")
	// ErrMismatch: replayed PCR values differ from the expected ones.
	ErrMismatch = errors.New("replay does not match PCR values")
)

// ParseError locates a parse failure: the byte offset in the input stream and the index
// of the record being read (counting from 0).
type ParseError struct {
	Offset int64
	Record int
	Err    error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("record %d at byte %d: %v", e.Record, e.Offset, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// ReplayError says where a replay parts from the expected PCR values.
type ReplayError struct {
	Bank     string
	PCR      uint32
	Expected []byte
	Got      []byte
	// Record is the index (from 0, over all records replayed by this replayer) of the last
	// record extended into this PCR, -1 if none: the chains part at or before it.
	Record int
	// Records is how many records were replayed in total.
	Records int
	// Mismatched counts all (PCR, bank) pairs that differ; this error describes the first.
	Mismatched int
}

func (e *ReplayError) Error() string {
	s := fmt.Sprintf("PCR %d bank %s: replay gives %s, expected %s (after %d records",
		e.PCR, e.Bank, hex.EncodeToString(e.Got), hex.EncodeToString(e.Expected), e.Records)
	if e.Record >= 0 {
		s += fmt.Sprintf("; last record extended into this PCR is #%d", e.Record)
	} else {
		s += "; no record extends this PCR"
	}
	s += ")"
	if e.Mismatched > 1 {
		s += fmt.Sprintf(" and %d more PCR/bank pairs differ", e.Mismatched-1)
	}
	return s
}

func (e *ReplayError) Unwrap() error { return ErrMismatch }
