package initramfs

import (
	"errors"
	"fmt"
	"strings"
)

// Refusal is one reason not to jump.
type Refusal struct {
	Code     string `json:"code"` // no-tpm, foreign-store, unpredictable, handoff-in-initrd, kexec-disabled
	Reason   string `json:"reason"`
	Remedy   string `json:"remedy"`
	Forcible bool   `json:"forcible"`
}

// ErrRefused is wrapped by *RefusedError.
var ErrRefused = errors.New("kexec refused")

// RefusedError lists why the jump would leave a log that cannot be proven.
type RefusedError struct{ Refusals []Refusal }

func (e *RefusedError) Error() string {
	var b strings.Builder
	b.WriteString("kexec refused: the log could not be proven after the jump")
	for _, r := range e.Refusals {
		fmt.Fprintf(&b, "\n  - %s: %s (%s)", r.Code, r.Reason, r.Remedy)
	}
	return b.String()
}

func (e *RefusedError) Unwrap() error { return ErrRefused }
