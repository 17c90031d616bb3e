// Package conformance is one table of 7.2 IMA kernel behaviours that user space can see
// through securityfs: file names and modes, the one-writer/many-readers rule, every errno
// of the list files' write handler and the order of its checks, the counters and the list
// bytes after A, D and N. The same table runs against the kernel model over FUSE (go test
// in this package) and inside QEMU against the real 7.2 kernels (the guest program
// testvm/guest/conform sends back what it saw; TestVMConformance compares).
//
// After the file rows, the table says what the next kernel shows after a kexec from each of
// a few states (kexec.go): the model runs them with in-process kexecs, the guest across
// real ones.
//
// Every expectation is the kernel's (security/integrity/ima of 7.2.13), with the function
// that decides it. Rows that user space cannot observe on a real kernel are marked
// ModelOnly with the reason; they run only against the model.
package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/imakexec/imakexec/serialize"
)

// Kind is the kernel configuration a run expects.
type Kind string

// Kinds.
const (
	// Staging: 7.2 with CONFIG_IMA_STAGING=y (and CONFIG_IMA_KEXEC=y).
	Staging Kind = "staging"
	// NoStaging: 7.2 without CONFIG_IMA_STAGING, as Debian builds it.
	NoStaging Kind = "debian"
)

// Env is the kernel a run talks to.
type Env interface {
	// IMADir is securityfs's integrity/ima directory.
	IMADir() string
	// Measure adds n records to the current list (distinct files read by root, measured
	// by FILE_CHECK) and nothing else.
	Measure(n int) error
	// Suspend runs the reboot notifiers (ima_reboot_notifier) and keeps user space
	// running; only the model can. A real kernel returns ErrCannotSuspend.
	Suspend() error
}

// ErrCannotSuspend: a real kernel suspends measurement only on its way to a reboot.
var ErrCannotSuspend = errors.New("measurement is suspended only on the way to a reboot")

// Row is one observed behaviour.
type Row struct {
	Name string `json:"name"`
	Got  string `json:"got"`
}

// Expect is the kernel's answer for a row.
type Expect struct {
	Name string
	// Want per kind; a kind missing from the map does not run the row.
	Want map[Kind]string
	// Source is the kernel function that decides it.
	Source string
	// ModelOnly says why a real kernel cannot show it to user space ("" = it can).
	ModelOnly string
}

// both is the same answer on both kinds.
func both(s string) map[Kind]string { return map[Kind]string{Staging: s, NoStaging: s} }

// Table is the conformance table, in the order Run produces the rows.
var Table = []Expect{
	{Name: "mode binary_runtime_measurements_sha1", Want: both("0660"), Source: "create_securityfs_measurement_lists"},
	{Name: "mode ascii_runtime_measurements_sha256", Want: both("0660"), Source: "create_securityfs_measurement_lists"},
	{Name: "mode runtime_measurements_count", Want: both("0440"), Source: "ima_fs_init"},
	{Name: "mode violations", Want: both("0440"), Source: "ima_fs_init"},
	{Name: "symlink binary_runtime_measurements", Want: both("binary_runtime_measurements_sha1"), Source: "ima_fs_init"},
	{Name: "mode binary_runtime_measurements_sha1_staged", Want: map[Kind]string{Staging: "0660", NoStaging: "absent"}, Source: "ima_fs_init (IS_ENABLED(CONFIG_IMA_STAGING))"},
	{Name: "symlink binary_runtime_measurements_staged", Want: map[Kind]string{Staging: "binary_runtime_measurements_sha1_staged", NoStaging: "absent"}, Source: "create_securityfs_staging_links"},
	{Name: "write open while a reader is open", Want: both("EBUSY"), Source: "ima_measure_lock"},
	{Name: "read open while a writer is open", Want: both("EBUSY"), Source: "ima_measure_lock"},
	{Name: "second write open by the writer's thread", Want: both("ok"), Source: "ima_measure_lock (measure_writer_extra_writes)"},
	{Name: "write open by another thread while a writer is open", Want: both("EBUSY"), Source: "ima_measure_lock"},
	{Name: "two readers at once", Want: both("ok"), Source: "ima_measure_lock"},
	{Name: "request without newline", Want: both("EINVAL"), Source: "_ima_measurements_write"},
	{Name: "request of 22 bytes", Want: both("EINVAL"), Source: "_ima_measurements_write (STAGED_REQ_LENGTH)"},
	{Name: "A on an original file", Want: both("EINVAL"), Source: "_ima_measurements_write"},
	{Name: "D on an original file", Want: both("EINVAL"), Source: "_ima_measurements_write"},
	{Name: "N = 0", Want: both("EINVAL"), Source: "_ima_measurements_write"},
	{Name: "N not a number", Want: both("EINVAL"), Source: "kstrtoul"},
	{Name: "N beyond the list", Want: both("ENOENT"), Source: "ima_queue_delete_partial"},
	{Name: "N = 2 of 3", Want: both("ok"), Source: "ima_queue_delete_partial"},
	{Name: "count after N = 2 of 3", Want: both("-2"), Source: "ima_queue_delete_partial (ima_num_records[BINARY])"},
	{Name: "list after N = 2 of 3", Want: both("old list without its first 2 records"), Source: "ima_queue_delete_partial"},
	{Name: "N on a staged file", Want: map[Kind]string{Staging: "EINVAL"}, Source: "_ima_measurements_write"},
	{Name: "D with nothing staged", Want: map[Kind]string{Staging: "ENOENT"}, Source: "ima_queue_staged_delete_all"},
	{Name: "A", Want: map[Kind]string{Staging: "ok"}, Source: "ima_queue_stage"},
	{Name: "staged list after A", Want: map[Kind]string{Staging: "the list before A"}, Source: "ima_queue_stage (list_replace)"},
	{Name: "count after A", Want: map[Kind]string{Staging: "0"}, Source: "ima_queue_stage (ima_num_records[BINARY] = 0)"},
	{Name: "A with records staged and the list empty", Want: map[Kind]string{Staging: "EEXIST"}, Source: "ima_queue_stage (EEXIST checked before ENOENT)"},
	{Name: "D", Want: map[Kind]string{Staging: "ok"}, Source: "ima_queue_staged_delete_all"},
	{Name: "staged list after D", Want: map[Kind]string{Staging: "empty"}, Source: "ima_queue_staged_delete_all"},
	{Name: "A with the list empty", Want: map[Kind]string{Staging: "ENOENT"}, Source: "ima_queue_stage"},
	{Name: "A after N", Want: map[Kind]string{Staging: "ok"}, Source: "ima_queue_stage"},
	// Suspension: ima_reboot_notifier runs in kernel_restart_prepare (reboot, kexec),
	// after which user space does not run again in that kernel.
	{Name: "suspended: A with records staged", Want: map[Kind]string{Staging: "EEXIST"}, Source: "ima_queue_stage", ModelOnly: suspendedWhy},
	{Name: "suspended: N beyond the list", Want: map[Kind]string{Staging: "ENOENT"}, Source: "ima_queue_delete_partial (counted before the mutex)", ModelOnly: suspendedWhy},
	{Name: "suspended: N", Want: map[Kind]string{Staging: "ESTALE"}, Source: "ima_queue_delete_partial", ModelOnly: suspendedWhy},
	{Name: "suspended: D", Want: map[Kind]string{Staging: "ESTALE"}, Source: "ima_queue_staged_delete_all", ModelOnly: suspendedWhy},
	{Name: "suspended: lists still readable", Want: map[Kind]string{Staging: "ok"}, Source: "ima_measurements_open (no suspension check)", ModelOnly: suspendedWhy},
	// After a kexec (kexec.go): the next kernel's first look at its list, per state.
	{Name: AfterRow("records staged and current", "next kernel's list"), Want: map[Kind]string{Staging: "staged, current, kexec_execute, boot_aggregate"}, Source: "ima_reboot_notifier, ima_dump_measurement_list (staged first), ima_init (restore before boot_aggregate)"},
	{Name: AfterRow("records staged and current", "next kernel's count"), Want: map[Kind]string{Staging: afterCount}, Source: "ima_restore_measurement_entry (ima_add_digest_entry counts it)"},
	{Name: AfterRow("records staged and current", "kexec_execute count"), Want: map[Kind]string{Staging: execCount}, Source: "ima_measure_kexec_event (ima_num_records[BINARY_FULL])"},
	{Name: AfterRow("records in the list", "next kernel's list"), Want: map[Kind]string{NoStaging: "boot_aggregate"}, Source: "ima_load_kexec_buffer (CONFIG_IMA_KEXEC=n: nothing to restore)"},
	{Name: AfterRow("records in the list", "next kernel's count"), Want: map[Kind]string{NoStaging: afterCount}, Source: "ima_add_digest_entry"},
	{Name: AfterRow("records in the list", "kexec_execute count"), Want: map[Kind]string{NoStaging: "no kexec_execute record"}, Source: "ima_reboot_notifier (#ifdef CONFIG_IMA_KEXEC)"},
	{Name: AfterRow("staged records deleted with D", "next kernel's list"), Want: map[Kind]string{Staging: "current, kexec_execute, boot_aggregate"}, Source: "ima_queue_staged_delete_all, ima_dump_measurement_list"},
	{Name: AfterRow("staged records deleted with D", "next kernel's count"), Want: map[Kind]string{Staging: afterCount}, Source: "ima_restore_measurement_entry"},
	{Name: AfterRow("staged records deleted with D", "kexec_execute count"), Want: map[Kind]string{Staging: execCount}, Source: "ima_measure_kexec_event (BINARY_FULL is not lowered by D)"},
	{Name: AfterRow("the whole list deleted with N", "next kernel's list"), Want: map[Kind]string{Staging: "current, kexec_execute, boot_aggregate", NoStaging: "boot_aggregate"}, Source: "ima_queue_delete_partial, ima_dump_measurement_list; CONFIG_IMA_KEXEC=n: ima_load_kexec_buffer"},
	{Name: AfterRow("the whole list deleted with N", "next kernel's count"), Want: both(afterCount), Source: "ima_restore_measurement_entry"},
	{Name: AfterRow("the whole list deleted with N", "kexec_execute count"), Want: map[Kind]string{Staging: execCount, NoStaging: "no kexec_execute record"}, Source: "ima_measure_kexec_event (BINARY_FULL is not lowered by N)"},
	{Name: AfterRow("the list outgrew the segment after the load", "next kernel's list"), Want: map[Kind]string{Staging: "a prefix of the old lists, boot_aggregate"}, Source: "ima_add_kexec_buffer (sized at load), ima_dump_measurement (cut at the segment's end), ima_restore_measurement_list (whole records only)"},
	{Name: AfterRow("the list outgrew the segment after the load", "next kernel's count"), Want: map[Kind]string{Staging: afterCount}, Source: "ima_restore_measurement_entry"},
	{Name: AfterRow("the list outgrew the segment after the load", "kexec_execute count"), Want: map[Kind]string{Staging: "no kexec_execute record"}, Source: "ima_reboot_notifier (measured last, before the dump, so it does not fit)"},
}

// The answers of the after-kexec count rows (AfterRows).
const (
	afterCount = "every record in its list"
	execCount  = "every record since boot, deleted ones included"
)

const suspendedWhy = "measurement is suspended by ima_reboot_notifier inside kernel_restart_prepare; user space never runs again in that kernel"

// Lookup returns the expectation of a row.
func Lookup(name string) (Expect, bool) {
	for _, e := range Table {
		if e.Name == name {
			return e, true
		}
	}
	return Expect{}, false
}

// Compare checks rows against the table for kind: every row of the table that runs on
// kind (and, with real set, is not ModelOnly) must be present with the kernel's answer.
func Compare(rows []Row, kind Kind, real bool) []string {
	got := map[string]string{}
	for _, r := range rows {
		got[r.Name] = r.Got
	}
	var diffs []string
	for _, e := range Table {
		want, ok := e.Want[kind]
		if !ok || (real && e.ModelOnly != "") {
			continue
		}
		g, ok := got[e.Name]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s: not run (%s)", e.Name, e.Source))
			continue
		}
		if g != want {
			diffs = append(diffs, fmt.Sprintf("%s: got %q, the kernel gives %q (%s)", e.Name, g, want, e.Source))
		}
	}
	return diffs
}

// Run runs every row for kind that env can show, in table order.
func Run(env Env, kind Kind) []Row {
	r := &runner{env: env, dir: env.IMADir(), kind: kind}
	r.files()
	r.locking()
	r.writes()
	if kind == Staging {
		r.staging()
		// Records in both lists, then suspend (the model only).
		if err := env.Measure(2); err == nil && env.Suspend() == nil {
			r.suspended()
		}
	}
	return r.rows
}

type runner struct {
	env  Env
	dir  string
	kind Kind
	rows []Row
}

func (r *runner) add(name, got string) { r.rows = append(r.rows, Row{name, got}) }

func (r *runner) p(name string) string { return filepath.Join(r.dir, name) }

// errName renders an error as the kernel's errno name, "ok" for nil.
func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var no syscall.Errno
	if errors.As(err, &no) {
		switch no {
		case syscall.EBUSY:
			return "EBUSY"
		case syscall.EINVAL:
			return "EINVAL"
		case syscall.ENOENT:
			return "ENOENT"
		case syscall.EEXIST:
			return "EEXIST"
		case syscall.EACCES:
			return "EACCES"
		case syscall.ESTALE:
			return "ESTALE"
		case syscall.EPERM:
			return "EPERM"
		case syscall.ENFILE:
			return "ENFILE"
		}
		return no.Error()
	}
	return err.Error()
}

func (r *runner) files() {
	for _, n := range []string{"binary_runtime_measurements_sha1", "ascii_runtime_measurements_sha256", "runtime_measurements_count", "violations", "binary_runtime_measurements_sha1_staged"} {
		fi, err := os.Lstat(r.p(n))
		switch {
		case errors.Is(err, os.ErrNotExist):
			r.add("mode "+n, "absent")
		case err != nil:
			r.add("mode "+n, err.Error())
		default:
			r.add("mode "+n, fmt.Sprintf("%04o", fi.Mode().Perm()))
		}
	}
	for _, n := range []string{"binary_runtime_measurements", "binary_runtime_measurements_staged"} {
		t, err := os.Readlink(r.p(n))
		switch {
		case errors.Is(err, os.ErrNotExist):
			r.add("symlink "+n, "absent")
		case err != nil:
			r.add("symlink "+n, err.Error())
		default:
			r.add("symlink "+n, t)
		}
	}
}

func (r *runner) locking() {
	list := r.p("binary_runtime_measurements_sha1")
	rd, err := os.Open(list)
	if err != nil {
		r.add("write open while a reader is open", "reader: "+errName(err))
	} else {
		r.add("write open while a reader is open", errName(openClose(list, os.O_WRONLY)))
		r.add("two readers at once", errName(openClose(r.p("ascii_runtime_measurements_sha1"), os.O_RDONLY)))
		rd.Close()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	w, err := os.OpenFile(list, os.O_WRONLY, 0)
	if err != nil {
		r.add("read open while a writer is open", "writer: "+errName(err))
		return
	}
	r.add("read open while a writer is open", errName(openClose(list, os.O_RDONLY)))
	r.add("second write open by the writer's thread", errName(openClose(r.p("ascii_runtime_measurements_sha1"), os.O_WRONLY)))
	other := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		other <- openClose(list, os.O_WRONLY)
	}()
	r.add("write open by another thread while a writer is open", errName(<-other))
	w.Close()
}

func openClose(name string, flag int) error {
	f, err := os.OpenFile(name, flag, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// request writes s to name in one write(2) on a fresh descriptor.
func request(name, s string) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(s))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (r *runner) count() int {
	b, err := os.ReadFile(r.p("runtime_measurements_count"))
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

func (r *runner) writes() {
	orig := r.p("binary_runtime_measurements_sha1")
	r.add("request without newline", errName(request(orig, "1")))
	r.add("request of 22 bytes", errName(request(orig, "1234567890123456789012")))
	r.add("A on an original file", errName(request(orig, "A\n")))
	r.add("D on an original file", errName(request(orig, "D\n")))
	r.add("N = 0", errName(request(orig, "0\n")))
	r.add("N not a number", errName(request(orig, "2x\n")))
	r.add("N beyond the list", errName(request(orig, "1000000000\n")))
	if err := r.env.Measure(3); err != nil {
		r.add("N = 2 of 3", "measure: "+err.Error())
		return
	}
	before, err := os.ReadFile(orig)
	if err != nil {
		r.add("N = 2 of 3", "read: "+err.Error())
		return
	}
	c0 := r.count()
	r.add("N = 2 of 3", errName(request(orig, "2\n")))
	r.add("count after N = 2 of 3", strconv.Itoa(r.count()-c0))
	after, err := os.ReadFile(orig)
	switch {
	case err != nil:
		r.add("list after N = 2 of 3", err.Error())
	case bytes.Equal(after, dropRecords(before, 2)):
		r.add("list after N = 2 of 3", "old list without its first 2 records")
	default:
		r.add("list after N = 2 of 3", fmt.Sprintf("%d bytes, old list %d bytes", len(after), len(before)))
	}
}

// dropRecords removes the first n records of a SHA1 binary list (nil if it has fewer).
func dropRecords(list []byte, n int) []byte {
	br := serialize.NewBinaryReader(bytes.NewReader(list), serialize.NewDigester().Order, serialize.SHA1Size)
	for i := 0; i < n; i++ {
		if _, err := br.Next(); err != nil {
			return nil
		}
	}
	return list[br.Offset():]
}

func (r *runner) staging() {
	orig := r.p("binary_runtime_measurements_sha1")
	staged := r.p("binary_runtime_measurements_sha1_staged")
	r.add("N on a staged file", errName(request(staged, "1\n")))
	r.add("D with nothing staged", errName(request(staged, "D\n")))
	before, _ := os.ReadFile(orig)
	r.add("A", errName(request(staged, "A\n")))
	got, err := os.ReadFile(staged)
	switch {
	case err != nil:
		r.add("staged list after A", err.Error())
	case bytes.Equal(got, before) && len(got) > 0:
		r.add("staged list after A", "the list before A")
	default:
		r.add("staged list after A", fmt.Sprintf("%d bytes, list before A %d bytes", len(got), len(before)))
	}
	r.add("count after A", strconv.Itoa(r.count()))
	r.add("A with records staged and the list empty", errName(request(staged, "A\n")))
	r.add("D", errName(request(staged, "D\n")))
	if got, err := os.ReadFile(staged); err != nil {
		r.add("staged list after D", err.Error())
	} else if len(got) == 0 {
		r.add("staged list after D", "empty")
	} else {
		r.add("staged list after D", fmt.Sprintf("%d bytes", len(got)))
	}
	r.add("A with the list empty", errName(request(staged, "A\n")))
	if err := r.env.Measure(3); err != nil {
		r.add("A after N", "measure: "+err.Error())
		return
	}
	if err := request(orig, "1\n"); err != nil {
		r.add("A after N", "N: "+errName(err))
		return
	}
	r.add("A after N", errName(request(staged, "A\n")))
}

// suspended runs with records staged (from "A after N") and in the current list, and
// measurement suspended.
func (r *runner) suspended() {
	orig := r.p("binary_runtime_measurements_sha1")
	staged := r.p("binary_runtime_measurements_sha1_staged")
	r.add("suspended: A with records staged", errName(request(staged, "A\n")))
	r.add("suspended: N beyond the list", errName(request(orig, "1000000000\n")))
	r.add("suspended: N", errName(request(orig, "1\n")))
	r.add("suspended: D", errName(request(staged, "D\n")))
	_, err1 := os.ReadFile(orig)
	_, err2 := os.ReadFile(staged)
	r.add("suspended: lists still readable", errName(errors.Join(err1, err2)))
}
