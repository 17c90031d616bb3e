package view

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// checkFiles compares every file of the view with the export of the same log.
func (e *env) checkFiles(what string) {
	e.t.Helper()
	for _, f := range e.v.Formats() {
		got, want := e.readView(f.Name()), e.export(f)
		if !bytes.Equal(got, want) {
			e.t.Fatalf("%s: %s: view has %d bytes, export %d; first difference at %d", what, f.Name(), len(got), len(want), firstDiff(got, want))
		}
	}
	legacy := e.readView("ascii_runtime_measurements")
	if !bytes.Equal(legacy, e.readView("ascii_runtime_measurements_sha1")) || len(legacy) == 0 {
		e.t.Fatalf("%s: ascii_runtime_measurements is not the SHA1 list (%d bytes)", what, len(legacy))
	}
	n := bytes.Count(legacy, []byte("\n"))
	cnt := strings.TrimSpace(string(e.readView("runtime_measurements_count")))
	if cnt != strconv.Itoa(n) {
		e.t.Fatalf("%s: runtime_measurements_count %q, the list has %d records", what, cnt, n)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// The view's files equal the export of the joined log at every step: live records before
// the first store, stored and live, after a staged drain (deletion), delete-n, a kexec
// and its rejoin; per-bank files carry the bank's digests.
func TestViewFilesEqualExport(t *testing.T) {
	e := newEnv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(40)
	e.serve()
	if got := len(e.v.Formats()); got < 4 {
		t.Fatalf("view has %d formats before the first store; want SHA1 and the kernel's banks", got)
	}
	e.checkFiles("no store yet")
	e.rejoin(nil)
	e.checkFiles("after the first rejoin")
	e.work(50)
	e.checkFiles("stored and live")
	if r := e.drain(handover.BackendStaged); r.Deleted == 0 {
		t.Fatalf("staged drain deleted nothing: %+v", r)
	}
	e.work(7)
	e.checkFiles("after a staged drain")
	e.drain(handover.BackendDeleteN)
	e.checkFiles("after delete-n")
	w := e.kexecJump(func() { e.checkFiles("kexec loaded, window records live") })
	e.rejoin(w)
	e.work(3)
	e.checkFiles("after kexec and rejoin")
	sha256List := e.readView("ascii_runtime_measurements_sha256")
	first, _, _ := bytes.Cut(sha256List, []byte("\n"))
	if fields := strings.Fields(string(first)); len(fields) < 2 || len(fields[1]) != 64 {
		t.Fatalf("sha256 list's first line %q has no 64-hex-digit template digest", first)
	}
}

// agent reads the view as Keylime's agent reads ima_ml_path (rust-keylime
// measurement_list.rs): the file is opened once and kept; a request for entry nth seeks to
// a cached byte offset of an earlier entry and counts newlines from there to the end; a
// request past the end returns the whole file from entry 0. The verifier side keeps the
// next entry number and the replayed PCR state between polls, and replays only new entries.
type agent struct {
	t       *testing.T
	path    string
	f       *os.File
	offsets []int64 // byte offset of entry i, for every entry seen
	next    int     // the verifier's next entry
	state   serialize.PCRValues
	banks   []serialize.Bank
}

func newAgent(t *testing.T, path string) *agent {
	a := &agent{t: t, path: path, banks: []serialize.Bank{serialize.SHA1, serialize.SHA256}}
	a.open()
	return a
}

func (a *agent) open() {
	f, err := os.Open(a.path)
	if err != nil {
		a.t.Fatalf("agent: open %s: %v", a.path, err)
	}
	a.f, a.offsets, a.next, a.state = f, []int64{0}, 0, serialize.PCRValues{}
	a.t.Cleanup(func() { f.Close() })
}

// fetch returns the lines from entry nth on, as the agent serves them, and the entry
// number of the first one.
func (a *agent) fetch(nth int) ([]string, int, error) {
	start := min(nth, len(a.offsets)-1)
	if _, err := a.f.Seek(a.offsets[start], io.SeekStart); err != nil {
		return nil, 0, err
	}
	r := bufio.NewReader(a.f)
	var lines []string
	off := a.offsets[start]
	for i := start; ; i++ {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) {
			if line != "" {
				a.t.Fatalf("agent: torn line at offset %d: %q", off, line)
			}
			break
		}
		if err != nil {
			return nil, 0, err
		}
		off += int64(len(line))
		if i+1 == len(a.offsets) {
			a.offsets = append(a.offsets, off)
		}
		if i >= nth {
			lines = append(lines, line)
		}
	}
	if nth > 0 && nth >= len(a.offsets) {
		// Past the end: the agent sends the whole list from entry 0.
		all, _, err := a.fetch(0)
		return all, 0, err
	}
	return lines, nth, nil
}

// poll is one attestation: fetch from the next entry, replay from the saved state, compare
// with the TPM's PCR 10 in SHA1 and SHA256 (read from the simulator after the fetch).
func (a *agent) poll(what string, tpm func([]serialize.Bank) serialize.PCRValues) int {
	a.t.Helper()
	lines, from, err := a.fetch(a.next)
	if err != nil {
		a.t.Fatalf("%s: agent read: %v", what, err)
	}
	if from != a.next {
		a.t.Fatalf("%s: agent asked for entry %d, the list ended before it (it has %d entries)", what, a.next, len(a.offsets)-1)
	}
	rp, err := serialize.NewReplayer(serialize.ReplayOptions{Banks: a.banks, Start: a.state})
	if err != nil {
		a.t.Fatal(err)
	}
	ar := serialize.NewASCIIReader(strings.NewReader(strings.Join(lines, "")), handover.StoreOrder)
	if err := rp.AddAll(ar); err != nil {
		a.t.Fatalf("%s: replay entries %d..: %v", what, a.next, err)
	}
	want := tpm(a.banks)
	for _, b := range a.banks {
		if got := rp.Value(10, b.Name); !bytes.Equal(got, want.Get(10, b.Name)) {
			a.t.Fatalf("%s: entries 0..%d replayed from the saved state give PCR 10 %s %x, the TPM has %x", what, a.next+len(lines)-1, b.Name, got, want.Get(10, b.Name))
		}
	}
	a.state = rp.State()
	a.next += len(lines)
	return len(lines)
}

func (e *env) count() int {
	e.t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(string(e.readView("runtime_measurements_count"))))
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// An agent-like reader that keeps one descriptor on the view's ASCII list polls by entry
// number while drains (staged deletion, delete-n), a kexec and its rejoin happen on the
// 7.2 model; every poll's new entries, replayed from the verifier's saved state, equal the
// TPM's PCR 10 in SHA1 and SHA256, and every drain succeeds while the descriptor is held.
// After a cold boot the old descriptor fails with ESTALE and a new one reads the new
// chain from entry 0.
func TestAgentKeepsAttestingAcrossDeletionAndKexec(t *testing.T) {
	e := newEnv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(10)
	e.rejoin(nil)
	e.serve()
	a := newAgent(t, filepath.Join(e.mnt, "ascii_runtime_measurements"))
	if n := a.poll("first poll", e.tpmPCR10); n == 0 {
		t.Fatal("first poll got no entries")
	}
	for round := range 3 {
		e.work(25)
		if n := a.poll("live records", e.tpmPCR10); n != 25 {
			t.Fatalf("round %d: poll got %d new entries, want 25", round, n)
		}
		backend := handover.BackendStaged
		if round == 1 {
			backend = handover.BackendDeleteN
		}
		r := e.drain(backend) // the agent holds its descriptor: must not be EBUSY
		if r.Deleted == 0 {
			t.Fatalf("round %d: drain deleted nothing from the kernel: %+v", round, r)
		}
		if n := a.poll("after a deletion", e.tpmPCR10); n != 0 {
			t.Fatalf("round %d: %d new entries after a drain that measured nothing", round, n)
		}
		e.work(5)
		a.poll("after a deletion, new records", e.tpmPCR10)
	}
	for range 2 {
		w := e.kexecJump(func() { a.poll("kexec loaded", e.tpmPCR10) })
		e.rejoin(w)
		if n := a.poll("after kexec and rejoin", e.tpmPCR10); n < 3 {
			t.Fatalf("poll after kexec got %d new entries; want the window, boot_aggregate and new records", n)
		}
		e.work(12)
		e.drain("auto")
		a.poll("new boot, drained", e.tpmPCR10)
	}
	if a.next != e.count() {
		t.Fatalf("agent has %d entries, runtime_measurements_count says %d", a.next, e.count())
	}

	// Cold boot: a new TPM power cycle and a new chain.
	if err := e.k.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	e.work(4)
	if r := e.rejoin(nil); r.Archived == "" || !r.NewChain {
		t.Fatalf("rejoin after a cold boot did not start a new chain: %+v", r)
	}
	_, _, err := a.fetch(a.next)
	if !errors.Is(err, syscall.ESTALE) {
		t.Fatalf("read on a descriptor of the old chain: got %v, want ESTALE", err)
	}
	a.f.Close()
	a.open()
	if n := a.poll("after a cold boot", e.tpmPCR10); n != e.count() || n < 5 {
		t.Fatalf("first poll of the new chain got %d entries, count says %d", n, e.count())
	}
}
