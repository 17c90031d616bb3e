// Package handover is the stateful half of imakexec: the handoff store (segment files in
// the kernel's kexec handover format, a hash-chained manifest, bound to one TPM power
// cycle), the kernel interfaces that read and delete IMA records (securityfs backends),
// drain, and the TPM access they need. It is the only package that touches securityfs,
// /proc or the TPM; the pure codecs are in package serialize.
//
// Kernel behaviour is cited by the kernel function it comes from (security/integrity/ima/ of
// Linux 7.2 unless a version is named); the store format and its invariants are in docs/.
package handover

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/imakexec/imakexec/internal/kcmdline"
	"github.com/imakexec/imakexec/serialize"
)

// Paths are the kernel file system locations handover reads. Every one is a parameter so
// tests can point them at a fake tree or the FUSE kernel model.
type Paths struct {
	// Securityfs is the securityfs mount point; the IMA files are under integrity/ima/ (or
	// ima/ on old kernels) below it (ima_fs_init).
	Securityfs string
	// Proc is the procfs mount point: sys/kernel/random/boot_id, sys/kernel/osrelease and
	// cmdline are read from it.
	Proc string
}

// DefaultPaths returns the paths of a running system.
func DefaultPaths() Paths { return Paths{Securityfs: "/sys/kernel/security", Proc: "/proc"} }

func (p Paths) withDefaults() Paths {
	d := DefaultPaths()
	if p.Securityfs == "" {
		p.Securityfs = d.Securityfs
	}
	if p.Proc == "" {
		p.Proc = d.Proc
	}
	return p
}

// ErrNoIMA is returned when no IMA directory is found below the securityfs mount point.
var ErrNoIMA = errors.New("no IMA securityfs directory")

// IMADir returns the IMA directory: Securityfs/integrity/ima, else Securityfs/ima (before the
// integrity/ directory, 6.x ima_fs_init).
func (p Paths) IMADir() (string, error) {
	p = p.withDefaults()
	for _, d := range []string{filepath.Join(p.Securityfs, "integrity", "ima"), filepath.Join(p.Securityfs, "ima")} {
		if _, err := os.Stat(filepath.Join(d, "binary_runtime_measurements")); err == nil {
			return d, nil
		}
		if _, err := os.Stat(filepath.Join(d, "binary_runtime_measurements_sha1")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w below %s (is securityfs mounted? IMA files are looked for in integrity/ima/ and ima/)", ErrNoIMA, p.Securityfs)
}

// KernelInfo is what the running kernel says about itself.
type KernelInfo struct {
	BootID  string // /proc/sys/kernel/random/boot_id: new at every boot, kexec included
	Release string // /proc/sys/kernel/osrelease
	Cmdline string // /proc/cmdline
}

// ReadKernelInfo reads the boot id, kernel release and command line below p.Proc.
func ReadKernelInfo(p Paths) (KernelInfo, error) {
	p = p.withDefaults()
	var ki KernelInfo
	b, err := os.ReadFile(filepath.Join(p.Proc, "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return ki, fmt.Errorf("read boot id: %w", err)
	}
	ki.BootID = strings.TrimSpace(string(b))
	if ki.BootID == "" {
		return ki, fmt.Errorf("read boot id: empty")
	}
	if b, err := os.ReadFile(filepath.Join(p.Proc, "sys", "kernel", "osrelease")); err == nil {
		ki.Release = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(p.Proc, "cmdline")); err == nil {
		ki.Cmdline = strings.TrimSpace(string(b))
	}
	return ki, nil
}

// cmdlineParam returns the value of the first key=value kernel parameter, or whether a
// bare key is present, by the kernel's own rules (package kcmdline: next_arg, parameq).
func cmdlineParam(cmdline, key string) (string, bool) {
	v, _, ok := kcmdline.Lookup(cmdline, key)
	return v, ok
}

// IMAHash is the ima_hash= boot parameter, or "" when the kernel's built-in default is used.
func (ki KernelInfo) IMAHash() string { v, _ := cmdlineParam(ki.Cmdline, "ima_hash"); return v }

// FlushHtable reports "on" when the kernel was booted with ima_flush_htable (ima_flush_htable_setup),
// else "off".
func (ki KernelInfo) FlushHtable() string {
	if _, ok := cmdlineParam(ki.Cmdline, "ima_flush_htable"); ok {
		return "on"
	}
	return "off"
}

// Scheme is the extend scheme of this kernel: padded SHA1 before 5.8, per-bank hashes from
// 5.8 on (ima_calc_field_array_hash per bank since 5.8; before it, the SHA1 digest padded). An unparsable release is taken as 5.8+.
func (ki KernelInfo) Scheme() serialize.Scheme {
	var maj, min int
	if _, err := fmt.Sscanf(ki.Release, "%d.%d", &maj, &min); err == nil {
		if maj < 5 || (maj == 5 && min < 8) {
			return serialize.SchemePad
		}
	}
	return serialize.SchemeHash
}
