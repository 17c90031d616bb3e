package handover

import (
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// A clean live update on a systemd host (README "Installing on a systemd host").
//
// A kernel that does not copy its list at kexec execute (Debian's 6.1 and 7.2) loses every
// record measured after the last drain. On a systemd host that is the whole clean shutdown:
// umount, swapoff, systemd-shutdown, the system-shutdown hooks and kexec -e. imakexec closes
// the gap in two steps:
//
//  1. ShutdownDrain, the ExecStop of imakexec-shutdown.service, runs after every ordinary
//     service stopped and before local filesystems unmount. It first opens for reading every
//     program the rest of the shutdown runs (and their ELF libraries): IMA measures a file
//     once per inode and PCR until it changes (ima_collect_measurement / iint->measured_pcrs),
//     so their later execution adds no record. Then it drains, and notes the kernel's record
//     counters in a mark under /run.
//  2. ShutdownJump, run by systemd-shutdown from system-shutdown/ after the root filesystem
//     was remounted read-only, compares the counters with the mark. Equal: nothing was
//     measured since the drain, the store holds the whole log, and it makes the jump itself
//     (reboot(LINUX_REBOOT_CMD_KEXEC)), so no later program is measured. Different, or no
//     mark: it names what was measured and unloads the kexec image, so systemd-shutdown
//     reboots cold (a new TPM power cycle, whose log verifies) instead of jumping into a
//     log that cannot be proven.

// DefaultShutdownMark is where ShutdownDrain leaves its mark for ShutdownJump: /run stays
// mounted until the jump (systemd-shutdown keeps API filesystems) and is gone after it.
const DefaultShutdownMark = "/run/imakexec-shutdown.json"

// DefaultLoadedMark is left by imakexec kexec --load-only: the image was loaded with a
// handoff, in this boot (its boot id). Without it the system-shutdown hook leaves the jump
// to systemd-shutdown: another tool loaded the image.
const DefaultLoadedMark = "/run/imakexec-loaded.json"

// LoadedMark is the content of DefaultLoadedMark.
type LoadedMark struct {
	BootID  string `json:"boot_id"`
	Kernel  string `json:"kernel"`
	Cmdline string `json:"cmdline"`
	Time    string `json:"time"`
}

// WriteLoadedMark notes that imakexec loaded the kexec image in this boot.
func WriteLoadedMark(path, proc string, m LoadedMark) error {
	if path == "" {
		path = DefaultLoadedMark
	}
	m.BootID = readBootID(Paths{Proc: proc}.withDefaults().Proc)
	m.Time = time.Now().UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(m)
	return writeFileAtomic(path, append(b, '\n'))
}

// LoadedByImakexec reads the loaded mark: true when it is of this boot.
func LoadedByImakexec(path, proc string) bool {
	if path == "" {
		path = DefaultLoadedMark
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var m LoadedMark
	return json.Unmarshal(b, &m) == nil && m.BootID != "" && m.BootID == readBootID(Paths{Proc: proc}.withDefaults().Proc)
}

// DefaultShutdownPreRead are the programs and files the rest of a systemd shutdown opens
// after imakexec-shutdown.service stops (systemd 252-257, Debian and Fedora paths). Missing
// ones are skipped. The ELF interpreter and libraries of each program are added.
var DefaultShutdownPreRead = []string{
	"/usr/lib/systemd/systemd-shutdown",
	"/usr/bin/umount", "/usr/sbin/swapoff", "/usr/sbin/kexec",
	"/usr/bin/grep", "/bin/sh", "/usr/bin/systemctl",
	"/etc/ld.so.cache", "/etc/fstab", "/usr/lib/locale/locale-archive",
}

// ShutdownPreReadDirs hold the system-shutdown hooks; every entry is pre-read.
var ShutdownPreReadDirs = []string{"/usr/lib/systemd/system-shutdown", "/etc/systemd/system-shutdown"}

// ShutdownPreReadConf lists more files to pre-read, one absolute path a line (# comments).
const ShutdownPreReadConf = "/etc/imakexec/shutdown-preread"

// ShutdownMark is what the last drain saw: the kernel's counters right after it.
type ShutdownMark struct {
	BootID     string `json:"boot_id"`
	Count      int64  `json:"runtime_measurements_count"`
	Violations int64  `json:"violations"`
	Store      string `json:"store"`
	Backend    string `json:"backend"`
	Drains     int    `json:"drains"`
	Stored     uint64 `json:"stored"`
	Time       string `json:"time"`
	PreRead    int    `json:"pre_read"`
}

// ShutdownOptions configure ShutdownDrain and ShutdownJump.
type ShutdownOptions struct {
	Paths    Paths
	Sysfs    string // default /sys
	StoreDir string
	Mark     string // default DefaultShutdownMark
	TPM      transport.TPM
	// PreRead overrides DefaultShutdownPreRead + ShutdownPreReadDirs + ShutdownPreReadConf.
	PreRead []string
	// Open opens a file for reading (default os.Open); tests count the opens.
	Open func(string) (*os.File, error)
}

func (o *ShutdownOptions) defaults() {
	o.Paths = o.Paths.withDefaults()
	if o.Sysfs == "" {
		o.Sysfs = "/sys"
	}
	if o.Mark == "" {
		o.Mark = DefaultShutdownMark
	}
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	if o.Open == nil {
		o.Open = os.Open
	}
}

// ShutdownDrainResult says what the last drain did.
type ShutdownDrainResult struct {
	Skipped string // why nothing was done (no kexec image loaded)
	PreRead []string
	Mark    *ShutdownMark
}

// KexecLoaded reads /sys/kernel/kexec_loaded.
func KexecLoaded(sysfs string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(sysfs, "kernel", "kexec_loaded"))
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// ShutdownDrain pre-reads what the rest of the shutdown runs, drains, and leaves the mark.
// Without a loaded kexec image (a poweroff or a cold reboot) it does nothing: the TPM is
// reset and the next boot starts a new chain.
func ShutdownDrain(ctx context.Context, o ShutdownOptions) (*ShutdownDrainResult, error) {
	o.defaults()
	_ = os.Remove(o.Mark) // a stale mark must never let a later jump through
	loaded, err := KexecLoaded(o.Sysfs)
	if err != nil {
		return nil, fmt.Errorf("read kexec_loaded: %w", err)
	}
	if !loaded {
		return &ShutdownDrainResult{Skipped: "no kexec image loaded: not a live update, nothing to hand over"}, nil
	}
	list := o.PreRead
	if list == nil {
		list = shutdownPreReadList()
	}
	res := &ShutdownDrainResult{PreRead: PreRead(list, o.Open)}
	k, err := ProbeKernel(o.Paths)
	if err != nil {
		return res, err
	}
	mark := &ShutdownMark{Store: o.StoreDir, PreRead: len(res.PreRead), BootID: readBootID(o.Paths.Proc)}
	// A drain may itself be measured (it opens the manifest the previous drain changed):
	// drain until the counters right after a drain are what that drain left.
	converged := false
	for mark.Drains < 3 && !converged {
		dr, err := Drain(ctx, DrainOptions{Paths: o.Paths, StoreDir: o.StoreDir, TPM: o.TPM})
		if err != nil {
			return res, fmt.Errorf("last drain: %w", err)
		}
		mark.Drains++
		mark.Backend, mark.Stored = string(dr.Backend), mark.Stored+dr.Stored
		mark.Count, mark.Violations = k.Count(), readCounter(k.Dir, "violations")
		if mark.Count < 0 {
			return res, errors.New("last drain: runtime_measurements_count is unreadable")
		}
		converged = uint64(mark.Count) == leftAfterDrain(dr)
	}
	if !converged {
		return res, fmt.Errorf("last drain: records keep being measured during the drain (%d drains, the kernel counts %d records): no mark, the jump will be refused", mark.Drains, mark.Count)
	}
	mark.Time = time.Now().UTC().Format(time.RFC3339Nano)
	b, _ := json.Marshal(mark)
	if err := os.MkdirAll(filepath.Dir(o.Mark), 0o700); err != nil {
		return res, err
	}
	if err := writeFileAtomic(o.Mark, append(b, '\n')); err != nil {
		return res, fmt.Errorf("write shutdown mark: %w", err)
	}
	res.Mark = mark
	return res, nil
}

// leftAfterDrain is the count runtime_measurements_count shows right after a drain that no
// record followed: the whole list for a snapshot (nothing is deleted), else none.
func leftAfterDrain(dr *DrainResult) uint64 {
	if dr.Backend == BackendSnapshot {
		return dr.Held
	}
	return 0
}

// ErrShutdownUnproven: records were measured after the last drain (or it did not run), so a
// jump now would leave a log that cannot be proven on a kernel without carry at execute.
var ErrShutdownUnproven = errors.New("records after the last drain")

// ShutdownCheck compares the kernel's counters with the mark. nil: the store holds every
// record of this boot. An ErrShutdownUnproven error names the records measured since.
func ShutdownCheck(o ShutdownOptions) (*ShutdownMark, error) {
	o.defaults()
	b, err := os.ReadFile(o.Mark)
	if err != nil {
		return nil, fmt.Errorf("%w: no mark of the last drain (%v): imakexec-shutdown.service did not run or failed", ErrShutdownUnproven, err)
	}
	var m ShutdownMark
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: unreadable mark %s: %v", ErrShutdownUnproven, o.Mark, err)
	}
	if id := readBootID(o.Paths.Proc); m.BootID != id {
		return &m, fmt.Errorf("%w: the mark is of boot %s, this is boot %s", ErrShutdownUnproven, m.BootID, id)
	}
	dir, err := o.Paths.IMADir()
	if err != nil {
		return &m, err
	}
	k := &Kernel{Dir: dir}
	n, v := k.Count(), readCounter(dir, "violations")
	if n == m.Count && v == m.Violations {
		return &m, nil
	}
	names := recordsSince(dir, m.Count, n)
	return &m, fmt.Errorf("%w: %d records (%d violations) measured after the last drain at %s: %s", ErrShutdownUnproven,
		n-m.Count, v-m.Violations, m.Time, strings.Join(names, ", "))
}

// recordsSince names the records after the first `from` ones of the ASCII list (at most 20).
// Reading securityfs is not measured (dont_measure SECURITYFS_MAGIC in every built-in policy).
func recordsSince(dir string, from, to int64) []string {
	b, err := os.ReadFile(filepath.Join(dir, "ascii_runtime_measurements"))
	if err != nil || from < 0 {
		return []string{"(list unreadable)"}
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	var out []string
	for i := from; i < int64(len(lines)) && i < to; i++ {
		f := strings.Fields(lines[i])
		if len(out) == 20 {
			out = append(out, "...")
			break
		}
		if len(f) >= 5 {
			out = append(out, f[4])
		} else {
			out = append(out, lines[i])
		}
	}
	if len(out) == 0 {
		out = append(out, "(records not in the list: deleted, or the count was reset)")
	}
	return out
}

func readCounter(dir, name string) int64 {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func readBootID(proc string) string {
	b, _ := os.ReadFile(filepath.Join(proc, "sys", "kernel", "random", "boot_id"))
	return strings.TrimSpace(string(b))
}

// shutdownPreReadList is DefaultShutdownPreRead, the hooks and the configured extra files.
func shutdownPreReadList() []string {
	list := append([]string{}, DefaultShutdownPreRead...)
	if exe, err := os.Executable(); err == nil {
		list = append(list, exe)
	}
	for _, d := range ShutdownPreReadDirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			list = append(list, filepath.Join(d, e.Name()))
		}
	}
	if b, err := os.ReadFile(ShutdownPreReadConf); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") && filepath.IsAbs(l) {
				list = append(list, l)
			}
		}
	}
	return list
}

// libDirs are searched for DT_NEEDED libraries after the program's RUNPATH/RPATH.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"}

// PreRead opens every file of list for reading, with the ELF interpreter and libraries of
// each program (transitively), once per file; it returns the files opened. The open is the
// FILE_CHECK measurement; a later exec or mmap of the same unchanged inode adds no record.
func PreRead(list []string, open func(string) (*os.File, error)) []string {
	seen := map[string]bool{}
	var out []string
	var visit func(p string, depth int)
	visit = func(p string, depth int) {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if seen[p] || depth > 8 {
			return
		}
		seen[p] = true
		f, err := open(p)
		if err != nil {
			return
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return
		}
		out = append(out, p)
		ef, err := elf.NewFile(f)
		if err != nil {
			return // not ELF: a script or data file, opened is enough
		}
		defer ef.Close()
		for _, prog := range ef.Progs {
			if prog.Type == elf.PT_INTERP {
				b := make([]byte, min(prog.Filesz, 4096))
				if _, err := prog.ReadAt(b, 0); err == nil {
					visit(strings.TrimRight(string(b), "\x00"), depth+1)
				}
			}
		}
		needed, _ := ef.ImportedLibraries()
		var search []string
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			vals, _ := ef.DynString(tag)
			for _, v := range vals {
				for _, d := range strings.Split(v, ":") {
					search = append(search, strings.ReplaceAll(d, "$ORIGIN", filepath.Dir(p)))
				}
			}
		}
		search = append(search, libDirs...)
		for _, lib := range needed {
			for _, d := range search {
				if c := filepath.Join(d, lib); fileExists(c) {
					visit(c, depth+1)
					break
				}
			}
		}
	}
	for _, p := range list {
		visit(p, 0)
	}
	return out
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}
