package initramfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
)

// Steps are the handover operations the kexec flow needs. The command adapts package
// handover to it; tests use a fake that records the calls.
type Steps interface {
	// Inspect reports what the flow decides on, changing nothing.
	Inspect(ctx context.Context) (*State, error)
	// Drain moves every record the kernel holds into the store: the last drain before the
	// load. From its start on, the flow opens no input for reading.
	Drain(ctx context.Context) (*Drained, error)
}

// State is what Inspect reports.
type State struct {
	TPM        bool   // a TPM answers; without one the log cannot be proven after the jump
	TPMDetail  string // why not, or which TPM
	StoreBound bool   // the store is empty or bound to the current TPM power cycle
	// StoreDetail says what the binding is, e.g. "store resetCount 3, TPM resetCount 4".
	StoreDetail string
	Pending     int    // records the drain would move now; -1 when unknown
	Backend     string // drain backend (staged, delete-N, trim-log, snapshot)
	IMAHash     string // ima_hash from the log's d-ng prefixes; "" when unknown
	IMAHashFrom string // which records showed it
	// Templates are the templates the running kernel's records use (a custom
	// ima_template_fmt appears as its format string), and those the policy names for the
	// kexec functions.
	Templates []string
	Banks     []string
	IMAKexec  string // "yes"/"no"/"": the kernel carries its list across kexec
	// IMAKexecFrom says how IMAKexec is known (kernel config, log records).
	IMAKexecFrom string
	Release      string
	BootID       string
	// MeasuresKexec is true/false when the policy is known to measure (or not) the
	// KEXEC_* hooks; nil when unknown.
	MeasuresKexec *bool
	// Notes are what Inspect could not find out, for the report.
	Notes []string
}

// Drained is the result of the last drain.
type Drained struct {
	Records       int
	KernelCarries int
	Backend       string
	// Store lists every file of the store after the drain. Data is set for files the drain
	// wrote whole (it has the bytes); Appended covers files it appended to; for others,
	// Size and SHA256 let the flow use its copy read before the drain. A file the flow
	// cannot match is read again after the drain and recorded in Handoff.PostDrainReads
	// (it may be a FILE_CHECK record in the window). When Store is nil, the flow carries
	// its pre-drain copy as it is.
	Store []StoreFile
	// Appended holds, by store file name, the bytes the drain appended to a file it did
	// not rewrite (the manifest). The flow joins its pre-drain copy, cut at From, with
	// them, so that it need not read the file again.
	Appended map[string]Appended
}

// Appended is what a drain appended to one store file.
type Appended struct {
	// From is the file's length when the drain took the store (0: the drain wrote the
	// file from scratch, and Data is all of it).
	From int64
	// Data are the bytes from From to the end of the file.
	Data []byte
	// PrevLineSHA256, when set, is the SHA-256 (hex) of the line that ends at From (the
	// manifest's hash chain): the flow's copy must end its first From bytes with it.
	PrevLineSHA256 string
}

// join returns the file as the drain left it, from the flow's pre-drain copy, or false
// when the copy does not hold the prefix the drain appended to.
func (a Appended) join(old []byte, haveOld bool, size int64) ([]byte, bool) {
	if a.From+int64(len(a.Data)) != size {
		return nil, false
	}
	if a.From == 0 {
		return a.Data, true
	}
	if !haveOld || int64(len(old)) < a.From {
		return nil, false
	}
	prefix := old[:a.From]
	if a.PrevLineSHA256 != "" {
		body := bytes.TrimSuffix(prefix, []byte("\n"))
		if len(body) == len(prefix) {
			return nil, false // the prefix does not end with a complete line
		}
		last := body[bytes.LastIndexByte(body, '\n')+1:]
		if sum := sha256.Sum256(last); hex.EncodeToString(sum[:]) != a.PrevLineSHA256 {
			return nil, false
		}
	}
	return append(bytes.Clone(prefix), a.Data...), true
}

// InputFile is an input opened for reading. *os.File implements it.
type InputFile interface {
	io.Reader
	io.ReaderAt
	Fd() uintptr
	Stat() (fs.FileInfo, error)
	Close() error
}
