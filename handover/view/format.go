// Package view serves the joined measurement log (the handoff store's chain followed by
// the running kernel's records not stored yet) as the kernel's own list files, numbered
// from the first record since the TPM reset, for readers that expect securityfs: attestation
// agents such as Keylime's keep reading one file while imakexec drains, deletes and
// kexecs underneath.
//
// A record never moves: the store's records are immutable, and a live record served
// before a drain is stored at the same position with the same bytes, so the view only
// grows. Reads in the stored part touch only segment files; a read that reaches the end
// takes a snapshot (handover.ReadSnapshot), which opens the kernel's files for that read
// only. A sparse index (a checkpoint every IndexEvery records) maps a byte offset of every
// format to a record, so a read at any offset costs what it returns.
package view

import (
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// Kind is a list format.
type Kind int

const (
	Binary Kind = iota // binary_runtime_measurements_<bank>
	ASCII              // ascii_runtime_measurements_<bank>
)

// Format is one list file of the view: a format and the bank of its template digests.
type Format struct {
	Kind Kind
	Bank serialize.Bank
}

// Name is the kernel's file name for the format (ima_fs.c
// create_securityfs_measurement_lists, 6.10+: "<list>_<hash_algo_name>", or
// "<list>_tpm_alg_<id>" for a bank the kernel has no hash for).
func (f Format) Name() string {
	if f.Kind == ASCII {
		return "ascii_runtime_measurements_" + f.Bank.Name
	}
	return "binary_runtime_measurements_" + f.Bank.Name
}

// ParseName returns the format of a file name of the view, with the legacy names
// (ascii_runtime_measurements, binary_runtime_measurements: SHA1) accepted too.
func ParseName(name string) (Format, bool) {
	var f Format
	rest, ok := strings.CutPrefix(name, "ascii_runtime_measurements")
	if ok {
		f.Kind = ASCII
	} else if rest, ok = strings.CutPrefix(name, "binary_runtime_measurements"); ok {
		f.Kind = Binary
	} else {
		return f, false
	}
	if rest == "" {
		f.Bank = serialize.SHA1
		return f, true
	}
	bn, ok := strings.CutPrefix(rest, "_")
	if !ok {
		return f, false
	}
	b, err := serialize.ParseBank(bn)
	if err != nil || b.Name != bn {
		return f, false
	}
	f.Bank = b
	return f, true
}

// delta is how many bytes longer one record is in this format than in the same kind with
// SHA1 digests: only the template digest's size depends on the bank.
func (f Format) delta() int64 {
	d := int64(f.Bank.Size - serialize.SHA1Size)
	if f.Kind == ASCII {
		return 2 * d
	}
	return d
}
