package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// What the next kernel shows after a kexec, for each state the lists are left in right
// before the jump. The old kernel brings its lists into the state (Prepare), loads the next
// kernel with kexec_file_load, reads what it holds (Snapshot: a Before) and jumps; the next
// kernel reads its list first of all (ReadAfter: an After), before anything else is
// measured. AfterRows compares the two. With CONFIG_IMA_KEXEC (7.2: carried at execute):
//
//   - ima_reboot_notifier measures kexec_execute (ima_measure_kexec_event: BINARY_FULL, every
//     record since IMA init, restored and deleted ones included, not itself) and suspends
//     measurement; ima_update_kexec_buffer then dumps the staged list, then the current one
//     (ima_dump_measurement_list);
//   - the next kernel's ima_init restores the buffer (ima_load_kexec_buffer,
//     ima_restore_measurement_list: counted in runtime_measurements_count like any record)
//     and then adds its own boot_aggregate (ima_add_boot_aggregate).
//
// Without it (Debian's 7.2) the next kernel's list is its boot_aggregate alone.

// KexecState is one state the old kernel's lists are left in before the jump.
type KexecState struct {
	Name  string
	Kinds []Kind
	// setup brings the lists into the state and returns how many records it deleted.
	setup func(r *runner) (int, error)
	// afterLoad runs between kexec_file_load and the snapshot (nil: nothing).
	afterLoad func(r *runner) error
}

// AfterLoad runs what the state does between kexec_file_load and the jump.
func (st KexecState) AfterLoad(env Env) error {
	if st.afterLoad == nil {
		return nil
	}
	if err := st.afterLoad(&runner{env: env, dir: env.IMADir()}); err != nil {
		return fmt.Errorf("state %q after the load: %w", st.Name, err)
	}
	return nil
}

// KexecStates are the states, in the order one chain of kexecs runs them (each state's
// setup runs in the kernel the previous state's kexec started).
var KexecStates = []KexecState{
	{Name: "records staged and current", Kinds: []Kind{Staging}, setup: func(r *runner) (int, error) {
		if err := r.env.Measure(2); err != nil {
			return 0, err
		}
		if err := request(r.p(stagedFile), "A\n"); err != nil {
			return 0, fmt.Errorf("write A: %w", err)
		}
		return 0, r.env.Measure(2)
	}},
	{Name: "records in the list", Kinds: []Kind{NoStaging}, setup: func(r *runner) (int, error) {
		return 0, r.env.Measure(2)
	}},
	{Name: "staged records deleted with D", Kinds: []Kind{Staging}, setup: func(r *runner) (int, error) {
		n := r.count()
		if err := request(r.p(stagedFile), "A\n"); err != nil {
			return 0, fmt.Errorf("write A: %w", err)
		}
		if err := request(r.p(stagedFile), "D\n"); err != nil {
			return 0, fmt.Errorf("write D: %w", err)
		}
		return n, r.env.Measure(2)
	}},
	{Name: "the whole list deleted with N", Kinds: []Kind{Staging, NoStaging}, setup: func(r *runner) (int, error) {
		n := r.count()
		if n <= 0 {
			return 0, fmt.Errorf("runtime_measurements_count is %d", n)
		}
		if err := request(r.p(listFile), strconv.Itoa(n)+"\n"); err != nil {
			return 0, fmt.Errorf("write N=%d: %w", n, err)
		}
		return n, nil
	}},
	// Last: the segment is sized at load (list + CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB, half a
	// page when 0, ima_add_kexec_buffer) and filled at execute; 80 records measured after
	// the load do not fit, and ima_dump_measurement cuts the first one that does not.
	{Name: "the list outgrew the segment after the load", Kinds: []Kind{Staging}, setup: func(r *runner) (int, error) {
		return 0, nil
	}, afterLoad: func(r *runner) error { return r.env.Measure(80) }},
}

const (
	listFile   = "binary_runtime_measurements_sha1"
	stagedFile = "binary_runtime_measurements_sha1_staged"
)

// StatesFor returns the states that run on kind, in chain order.
func StatesFor(kind Kind) []KexecState {
	var out []KexecState
	for _, s := range KexecStates {
		for _, k := range s.Kinds {
			if k == kind {
				out = append(out, s)
			}
		}
	}
	return out
}

// Before is what the old kernel held right before the jump, after kexec_file_load.
type Before struct {
	State   string `json:"state"`
	Staged  []byte `json:"staged"`
	Current []byte `json:"current"`
	// Deleted counts the records this kernel deleted since it booted (D, N).
	Deleted int `json:"deleted"`
}

// After is the next kernel's first look at its list.
type After struct {
	List  []byte `json:"list"`
	Count int    `json:"count"`
}

// Prepare brings the lists of a kernel that has just booted into state st and returns how
// many records it deleted.
func Prepare(env Env, st KexecState) (int, error) {
	n, err := st.setup(&runner{env: env, dir: env.IMADir()})
	if err != nil {
		return 0, fmt.Errorf("state %q: %w", st.Name, err)
	}
	return n, nil
}

// Snapshot reads both lists (the staged one is empty where there is none) for the state
// the kernel is in; call it after kexec_file_load and right before the jump.
func Snapshot(env Env, state string, deleted int) (Before, error) {
	b := Before{State: state, Deleted: deleted}
	var err error
	if b.Current, err = os.ReadFile(env.IMADir() + "/" + listFile); err != nil {
		return b, err
	}
	if b.Staged, err = os.ReadFile(env.IMADir() + "/" + stagedFile); errors.Is(err, os.ErrNotExist) {
		b.Staged, err = nil, nil
	}
	return b, err
}

// ReadAfter is the next kernel's list and count, read before anything else is measured.
func ReadAfter(env Env) (After, error) {
	var a After
	var err error
	if a.List, err = os.ReadFile(env.IMADir() + "/" + listFile); err != nil {
		return a, err
	}
	r := &runner{env: env, dir: env.IMADir()}
	a.Count = r.count()
	return a, nil
}

// KexecEnv is a kernel the table can kexec in-process (the model). A real kernel's kexec
// ends the program; the guest program runs the same steps across real jumps.
type KexecEnv interface {
	Env
	// KexecLoad is kexec_file_load of the next kernel (the same one) and an initramfs.
	KexecLoad() error
	// KexecExecute jumps; it returns in the next kernel.
	KexecExecute() error
}

// RunKexec runs every state of kind on env, one kexec each, and returns the rows.
func RunKexec(env KexecEnv, kind Kind) ([]Row, error) {
	var rows []Row
	for _, st := range StatesFor(kind) {
		deleted, err := Prepare(env, st)
		if err != nil {
			return rows, err
		}
		if err := env.KexecLoad(); err != nil {
			return rows, fmt.Errorf("state %q: kexec_file_load: %w", st.Name, err)
		}
		if err := st.AfterLoad(env); err != nil {
			return rows, err
		}
		b, err := Snapshot(env, st.Name, deleted)
		if err != nil {
			return rows, err
		}
		if err := env.KexecExecute(); err != nil {
			return rows, fmt.Errorf("state %q: kexec: %w", st.Name, err)
		}
		a, err := ReadAfter(env)
		if err != nil {
			return rows, err
		}
		rows = append(rows, AfterRows(b, a)...)
	}
	return rows, nil
}

// AfterRow names the rows of a state: "after kexec, STATE: WHAT".
func AfterRow(state, what string) string { return "after kexec, " + state + ": " + what }

// AfterRows are the rows of one state: the next kernel's list described part by part
// ("staged" and "current": the old kernel's lists byte for byte; then each further record
// by kind), its count file against its list, and the kexec_execute record's count against
// every record the old kernel held or deleted.
func AfterRows(b Before, a After) []Row {
	rest := a.List
	var parts []string
	for _, p := range []struct {
		name string
		list []byte
	}{{"staged", b.Staged}, {"current", b.Current}} {
		if len(p.list) > 0 && bytes.HasPrefix(rest, p.list) {
			parts = append(parts, p.name)
			rest = rest[len(p.list):]
		}
	}
	if len(parts) == 0 {
		// Nothing carried whole: does the list start with a shorter run of the old lists'
		// records (a dump cut at the segment's end)?
		old := append(append([]byte(nil), b.Staged...), b.Current...)
		// The next kernel's boot_aggregate must follow: kexec leaves PCRs 0-9 alone, so a
		// kernel that carried nothing starts with a boot_aggregate equal to the old one.
		if head := carriedHead(rest, old); head > 0 && head < len(old) && startsWithBootAggregate(rest[head:]) {
			parts = append(parts, "a prefix of the old lists")
			rest = rest[head:]
		}
	}
	recs, err := readRecords(rest)
	var exec *serialize.KexecEvent
	last := ""
	for i := range recs {
		label := "other"
		if ev, ok := serialize.ParseKexecEvent(&recs[i], order); ok {
			label = ev.Name
			if ev.Name == "kexec_execute" && exec == nil {
				exec = &ev
			}
		} else if serialize.IsBootAggregate(&recs[i], order) {
			label = "boot_aggregate"
		}
		if label == "other" && last == "other" {
			continue
		}
		parts = append(parts, label)
		last = label
	}
	if err != nil {
		parts = append(parts, "unreadable: "+err.Error())
	}
	desc := strings.Join(parts, ", ")
	if desc == "" {
		desc = "empty"
	}
	rows := []Row{{AfterRow(b.State, "next kernel's list"), desc}}
	total, _ := countRecords(a.List)
	if a.Count == total {
		rows = append(rows, Row{AfterRow(b.State, "next kernel's count"), afterCount})
	} else {
		rows = append(rows, Row{AfterRow(b.State, "next kernel's count"), fmt.Sprintf("%d, its list has %d records", a.Count, total)})
	}
	held, err1 := countRecords(b.Staged)
	cur, err2 := countRecords(b.Current)
	switch want := b.Deleted + held + cur; {
	case exec == nil:
		rows = append(rows, Row{AfterRow(b.State, "kexec_execute count"), "no kexec_execute record"})
	case err1 != nil || err2 != nil:
		rows = append(rows, Row{AfterRow(b.State, "kexec_execute count"), fmt.Sprintf("old lists unreadable: %v", errors.Join(err1, err2))})
	case exec.Count == uint64(want):
		rows = append(rows, Row{AfterRow(b.State, "kexec_execute count"), execCount})
	default:
		rows = append(rows, Row{AfterRow(b.State, "kexec_execute count"), fmt.Sprintf("%d, the old kernel held %d and deleted %d", exec.Count, held+cur, b.Deleted)})
	}
	return rows
}

var order = serialize.NewDigester().Order

func readRecords(list []byte) ([]serialize.Record, error) {
	br := serialize.NewBinaryReader(bytes.NewReader(list), order, serialize.SHA1Size)
	var out []serialize.Record
	for {
		rec, err := br.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, err
		}
		out = append(out, rec.Clone())
	}
}

// carriedHead is the length of the longest run of whole records at the start of list
// that is also the start of old.
func carriedHead(list, old []byte) int {
	br := serialize.NewBinaryReader(bytes.NewReader(list), order, serialize.SHA1Size)
	head := 0
	for {
		if _, err := br.Next(); err != nil {
			return head
		}
		end := int(br.Offset())
		if end > len(old) || !bytes.Equal(list[:end], old[:end]) {
			return head
		}
		head = end
	}
}

func startsWithBootAggregate(list []byte) bool {
	rec, err := serialize.NewBinaryReader(bytes.NewReader(list), order, serialize.SHA1Size).Next()
	return err == nil && serialize.IsBootAggregate(rec, order)
}

func countRecords(list []byte) (int, error) {
	recs, err := readRecords(list)
	return len(recs), err
}
