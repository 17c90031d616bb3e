// Package kmodel is a model of the Linux kernel's IMA measurement list, checked against the
// kernel's own security/integrity/ima/ code (7.2.13; older behaviour from the versions
// named on each profile), each rule citing the kernel function it mirrors: measurement
// with the hash table and per-bank
// template digests extended into a real TPM, violations, boot_aggregate, the securityfs
// files and their open/write rules, 7.2 staging and delete-N, Steven Chen's unmerged
// ima_trim_log (v5), and the kexec handover of the list (sizing, copy at load or at
// execute, overflow, restore in the next kernel). Profiles select the behaviour of one
// kernel version and configuration.
//
// The model is reached through real files by package simfs (FUSE) and through the
// Kernel methods, which tests use to script a workload.
package kmodel

import (
	"fmt"
	"strings"
)

// Profile names a kernel version and configuration.
type Profile string

// Profiles.
const (
	// ProfileDebian61: Debian 12's 6.1 kernel: CONFIG_IMA_KEXEC unset (nothing is carried
	// across kexec, though a buffer from another kernel would be restored), read-only
	// legacy list files (before 6.10: regular files with SHA1 digests, no per-bank files).
	ProfileDebian61 Profile = "debian-6.1"
	// Profile61IMAKexec: 6.1 with CONFIG_IMA_KEXEC=y: the list is copied into the kexec
	// segment during kexec_file_load (ima_add_kexec_buffer, 6.1); records added later are
	// lost.
	Profile61IMAKexec Profile = "6.1-ima-kexec"
	// Profile616: 6.16: per-bank files (6.10), measurement suspended at reboot (6.14), the
	// segment sized at load with CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB and filled at execute
	// (ima_add_kexec_buffer, ima_update_kexec_buffer), kexec_load/kexec_execute critical
	// data (ima_measure_kexec_event).
	Profile616 Profile = "6.16"
	// Profile72: 7.2 with CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y: staged files, A/D/N,
	// mediated opens, runtime_measurements_count of the current list, staged records
	// carried first (ima_fs.c, ima_queue.c, ima_dump_measurement_list, 7.2).
	Profile72 Profile = "7.2"
	// ProfileDebian72: Debian's own 7.2 cloud kernel: CONFIG_IMA_STAGING and
	// CONFIG_IMA_KEXEC not set (the Kconfig defaults). The list files are still 0660,
	// mediated, and accept "N" (create_securityfs_measurement_lists and
	// _ima_measurements_write do not depend on staging); there are no _staged files, no
	// kexec carry-over and no kexec_load/kexec_execute records.
	ProfileDebian72 Profile = "debian-7.2"
	// Profile72Trim: 7.2 plus Steven Chen's v5 ima_trim_log (CONFIG_IMA_LOG_TRIMMING,
	// read T, write "T:N"). Not merged upstream.
	Profile72Trim Profile = "7.2+trim-log"
)

// Profiles lists every profile.
var Profiles = []Profile{ProfileDebian61, Profile61IMAKexec, Profile616, Profile72, ProfileDebian72, Profile72Trim}

// ParseProfile checks a profile name.
func ParseProfile(s string) (Profile, error) {
	for _, p := range Profiles {
		if string(p) == s {
			return p, nil
		}
	}
	names := make([]string, len(Profiles))
	for i, p := range Profiles {
		names[i] = string(p)
	}
	return "", fmt.Errorf("unknown kernel profile %q (want one of %s)", s, strings.Join(names, ", "))
}

// Features are the behaviours a profile switches on.
type Features struct {
	Release string // kernel release the profile stands for
	// IMAKexec is CONFIG_IMA_KEXEC: the sending side of the handover.
	IMAKexec bool
	// CopyAtExecute: the list is serialised at kexec execute (6.16+); otherwise at load.
	CopyAtExecute bool
	// KexecCriticalData: kexec_load / kexec_execute critical-data records (6.16+).
	KexecCriticalData bool
	// ExtraMemoryRule: segment extra is CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB (6.16+) rather
	// than half a page.
	ExtraMemoryRule bool
	// SuspendAtReboot: measurement is suspended by the reboot notifier (6.14+).
	SuspendAtReboot bool
	// PerBankFiles: *_runtime_measurements_<algo> files with legacy symlinks (6.10+).
	PerBankFiles bool
	// Mediated: open/close of the list files is mediated, the original files are 0660 and
	// accept "N\n" (7.2).
	Mediated bool
	// Staging: CONFIG_IMA_STAGING: the _staged files, A and D (7.2).
	Staging bool
	// CountCurrent: runtime_measurements_count counts the current list only (7.2); before,
	// every record added since IMA started, restored ones included.
	CountCurrent bool
	// TrimLog: CONFIG_IMA_LOG_TRIMMING of the v5 trim series: ima_trim_log.
	TrimLog bool
	// TwoPartSize: the segment size adds the 24-byte header once per counted part, the
	// current and the staged list (ima_add_kexec_buffer, 7.2), so it can be a page more
	// than a single-header estimate.
	TwoPartSize bool
}

// Features returns the behaviours of a profile.
func (p Profile) Features() Features {
	switch p {
	case ProfileDebian61:
		return Features{Release: "6.1.0-debian"}
	case Profile61IMAKexec:
		return Features{Release: "6.1.0-ima-kexec", IMAKexec: true}
	case Profile616:
		return Features{Release: "6.16.0", IMAKexec: true, CopyAtExecute: true, KexecCriticalData: true,
			ExtraMemoryRule: true, SuspendAtReboot: true, PerBankFiles: true}
	case Profile72:
		return Features{Release: "7.2.0", IMAKexec: true, CopyAtExecute: true, KexecCriticalData: true,
			ExtraMemoryRule: true, SuspendAtReboot: true, PerBankFiles: true, Mediated: true, Staging: true, CountCurrent: true, TwoPartSize: true}
	case ProfileDebian72:
		return Features{Release: "7.2.0-debian", SuspendAtReboot: true, PerBankFiles: true, Mediated: true, CountCurrent: true}
	case Profile72Trim:
		return Features{Release: "7.2.0-trim-log", IMAKexec: true, CopyAtExecute: true, KexecCriticalData: true,
			ExtraMemoryRule: true, SuspendAtReboot: true, PerBankFiles: true, Mediated: true, Staging: true, CountCurrent: true, TrimLog: true, TwoPartSize: true}
	}
	return Features{}
}

// Config configures a model kernel. The zero value of every field but Profile is a
// sensible default.
type Config struct {
	Profile Profile
	// Policy is the IMA policy in the kernel's syntax (one rule per line); empty means
	// DefaultPolicy.
	Policy string
	// Template is the default template (ima_template= or ima_template_fmt=); default
	// "ima-ng". "ima" with an ima_hash other than sha1 is ignored as ima_template_setup
	// does (the default stays). Buffer measurements use ima-buf unless a rule names a
	// template (ima_init_template, process_buffer_measurement).
	Template string
	// Hash is ima_hash, the file hash algorithm and the key of the hash table; default
	// "sha256". One of sha1, sha256, sha384, sha512.
	Hash string
	// PCR is CONFIG_IMA_MEASURE_PCR_IDX; default 10.
	PCR uint32
	// FlushHTable is the ima_flush_htable boot parameter (7.2).
	FlushHTable bool
	// DisableHTable is CONFIG_IMA_DISABLE_HTABLE: no duplicate suppression.
	DisableHTable bool
	// ExtraMemoryKB is CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB (0..40, 0 = half a page; 6.16+).
	ExtraMemoryKB int
	// MemoryBytes is the machine's RAM; a kexec segment above half of it is refused
	// ("Binary measurement list too large"). Default 4 GiB.
	MemoryBytes int64
	// MaxReaders bounds concurrent readers of the mediated list files; one more open fails
	// with ENFILE. The kernel's bound is LONG_MAX; default math.MaxInt64.
	MaxReaders int64
	// NoFirmware skips the simulated firmware extends of PCRs 0-7 at cold boot (then
	// boot_aggregate hashes reset values only).
	NoFirmware bool
	// TPM is the TPM to use; nil opens the in-process simulator (closed by Close).
	TPM TPMDevice
	// StagingRFCv1 serves the staged files under the names of the staging RFC v1 (Dec
	// 2025, not merged): `…_staged_<algo>` rather than `…_<algo>_staged`, and reading an
	// empty staged list fails with ENOENT. Its other differences (N on the staged file,
	// staged records not carried by kexec) are not modelled. Only with Staging.
	StagingRFCv1 bool
	// Proc, when set, is a directory where the kernel keeps the /proc files imakexec reads
	// (boot id, release, command line) current at every boot; see DefaultCmdline.
	Proc string
	// RootFSMagic is the file-system magic of paths outside /proc, /sys, /dev, /tmp and
	// /run, which policy rules with fsmagic= see; default EXT4_SUPER_MAGIC.
	RootFSMagic uint32
}

// DefaultPolicy measures executed files, files read by root, the three kexec functions
// and the ima_kexec critical data.
const DefaultPolicy = `measure func=BPRM_CHECK mask=MAY_EXEC
measure func=FILE_CHECK mask=MAY_READ uid=0
measure func=KEXEC_KERNEL_CHECK
measure func=KEXEC_INITRAMFS_CHECK
measure func=KEXEC_CMDLINE
measure func=CRITICAL_DATA label=ima_kexec
`

func (c *Config) withDefaults() (Config, error) {
	o := *c
	if o.Profile == "" {
		o.Profile = Profile72
	}
	if _, err := ParseProfile(string(o.Profile)); err != nil {
		return o, err
	}
	if o.Policy == "" {
		o.Policy = DefaultPolicy
	}
	if o.Template == "" {
		o.Template = "ima-ng"
	}
	if o.Hash == "" {
		o.Hash = "sha256"
	}
	if o.Template == "ima" && o.Hash != "sha1" {
		// ima_template_setup: "template does not support hash alg"; md5 is not modelled.
		o.Template = "ima-ng"
	}
	if o.RootFSMagic == 0 {
		o.RootFSMagic = Ext4SuperMagic
	}
	switch o.Hash {
	case "sha1", "sha256", "sha384", "sha512":
	default:
		return o, fmt.Errorf("ima_hash %q not supported by the model (sha1, sha256, sha384, sha512)", o.Hash)
	}
	if o.PCR == 0 {
		o.PCR = 10
	}
	if o.PCR < 8 || o.PCR > 14 {
		return o, fmt.Errorf("CONFIG_IMA_MEASURE_PCR_IDX %d out of range 8-14", o.PCR)
	}
	if o.ExtraMemoryKB < 0 || o.ExtraMemoryKB > 40 {
		return o, fmt.Errorf("CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB %d out of range 0-40", o.ExtraMemoryKB)
	}
	if o.MemoryBytes == 0 {
		o.MemoryBytes = 4 << 30
	}
	if o.MaxReaders == 0 {
		o.MaxReaders = 1<<63 - 1
	}
	return o, nil
}
