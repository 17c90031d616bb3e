package e2e_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/e2e"
	"github.com/imakexec/imakexec/testvm/guestlib"
)

// drainJSON is the part of `imakexec drain --json` these tests read.
type drainJSON struct {
	Backend   string `json:"backend"`
	Stored    uint64 `json:"stored"`
	Deleted   uint64 `json:"deleted"`
	Suspended bool   `json:"suspended"`
	Note      string `json:"note"`
}

// checkDrains asserts every generation's periodic drain used backend and deleted what it
// stored (the kernel really freed the records: a drain that deletes nothing fails here),
// or, for snapshot, deleted nothing.
func checkDrains(t *testing.T, run *e2e.Run, backend string) {
	t.Helper()
	n := 0
	for _, g := range run.Gens {
		b, ok := g.Blobs["drain.json"]
		if !ok {
			continue
		}
		var d drainJSON
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("gen %d drain.json: %v: %s", g.N, err, b)
		}
		t.Logf("gen %d drain: backend %s, stored %d, deleted %d", g.N, d.Backend, d.Stored, d.Deleted)
		deletes := backend != "snapshot"
		if d.Backend != backend || (d.Deleted > 0) != deletes || d.Stored == 0 || d.Suspended {
			t.Errorf("gen %d drain: %+v, want backend %s deleting records", g.N, d, backend)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no generation sent a drain result")
	}
}

// TestVMDebian72ThreeGenerations: Debian's own 7.2 cloud kernel (CONFIG_IMA_STAGING and
// CONFIG_IMA_KEXEC not set: list files 0660 accepting N, nothing carried): every drain
// picks delete-n and deletes for real, two kexecs through imakexec kexec, and the joined
// log (store + window + live list) replays to PCR 10 in both banks, by our replay, by
// evmctl and by imakexec verify in the guest.
func TestVMDebian72ThreeGenerations(t *testing.T) {
	kernel := testvm.RequireDebian72Kernel(t)
	sc := scenario("debian72-3gen", kernel, 2)
	sc.Config.DrainFinal = true
	run := execute(t, sc)
	checkDrains(t, run, "delete-n")
	j := hostJoin(t, run)
	live, _ := e2e.ReadList(run.Last().Blobs["final/binary_runtime_measurements"])
	pcrs, _ := e2e.ReadPCRs(run.Last().Blobs["final/pcrs-sha1.txt"], run.Last().Blobs["final/pcrs-sha256.txt"])
	if ok, _ := e2e.Matches(live, pcrs); ok {
		t.Error("the last boot's list alone replays to PCR 10; records were deleted and nothing carried")
	}
	checkLeadCommands(t, run, j)
}

// staging72 makes a scenario one of the 7.2 staging kernel's: the kernel carries its list,
// and the policy measures the kexec_load and kexec_execute records.
func staging72(sc *e2e.Scenario) {
	sc.KernelCarries = true
	sc.Config.Policy += guestlib.PolicyKexecRecords
}

// TestVMStaging72: the 7.2 kernel with CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y: the
// drain picks staged (A, read, D) and deletes for real; the kexec_load and kexec_execute
// critical data are measured (policy CRITICAL_DATA label=ima_kexec) and carried at
// execute with the records measured after the last drain; the joined log verifies.
func TestVMStaging72(t *testing.T) {
	kernel := testvm.RequireIMAStagingKernel(t)
	sc := scenario("staging72", kernel, 1)
	staging72(sc)
	run := execute(t, sc)
	checkDrains(t, run, "staged")
	j := hostJoin(t, run)
	seen := names(j)
	if seen["kexec_load"] != 1 || seen["kexec_execute"] != 1 {
		t.Errorf("kexec records in the joined log: kexec_load %d, kexec_execute %d; want one each", seen["kexec_load"], seen["kexec_execute"])
	}
	checkLeadCommands(t, run, j)
}

// names counts the records of a join by event name.
func names(j *e2e.Join) map[string]int {
	seen := map[string]int{}
	for i := range j.Records {
		seen[e2e.Name(&j.Records[i])]++
	}
	return seen
}

// TestVMDebian72FlushHTable: Debian 7.2 booted with ima_flush_htable refuses N with EINVAL
// (_ima_measurements_write), so the drain must not pick delete-n: it takes snapshots and
// deletes nothing; the chain still joins and verifies across a kexec.
func TestVMDebian72FlushHTable(t *testing.T) {
	kernel := testvm.RequireDebian72Kernel(t)
	sc := scenario("debian72-flush-htable", kernel, 1)
	sc.Append = "ima_flush_htable"
	run := execute(t, sc)
	checkDrains(t, run, "snapshot")
	// The drain says why it did not delete (the kernel refuses N under ima_flush_htable).
	for _, g := range run.Gens {
		var d drainJSON
		if b, ok := g.Blobs["drain.json"]; ok && json.Unmarshal(b, &d) == nil {
			t.Logf("gen %d drain note: %s", g.N, d.Note)
			if !strings.Contains(d.Note, "ima_flush_htable is set") || !strings.Contains(d.Note, "does not use delete-n") {
				t.Errorf("gen %d: the drain does not say why delete-n was not used: note %q", g.N, d.Note)
			}
		}
	}
	j := hostJoin(t, run)
	checkLeadCommands(t, run, j)
}

// TestVMStaging72StagedAtKexec: on the 7.2 staging kernel, imakexec kexec --load-only,
// then three files read between kexec_file_load and the jump, then "A" so that every
// record since the last drain is staged and not deleted when the kernel dumps its lists
// at execute (staged first, ima_dump_measurement_list). The next kernel shows them once:
// not lost (6.1 would lose them), not doubled, and the hook's join verifies.
func TestVMStaging72StagedAtKexec(t *testing.T) {
	kernel := testvm.RequireIMAStagingKernel(t)
	sc := scenario("staging72-staged-at-kexec", kernel, 1)
	staging72(sc)
	sc.Config.LoadOnly = true
	sc.Config.AfterLoad = 3
	sc.Config.StageAtKexec = true
	run := execute(t, sc)
	checkDrains(t, run, "staged")
	if !run.Result.Stream.HasMark("staged at kexec gen=1") {
		t.Fatal("the agent did not stage before the jump")
	}
	j := hostJoin(t, run)
	seen := names(j)
	for i := 0; i < 3; i++ {
		if n := seen[fmt.Sprintf("/tmp/after-load-gen1-%d.txt", i)]; n != 1 {
			t.Errorf("record measured after kexec_file_load appears %d times in the joined log, want 1", n)
		}
	}
	if seen["kexec_load"] != 1 || seen["kexec_execute"] != 1 {
		t.Errorf("kexec records in the joined log: kexec_load %d, kexec_execute %d; want one each", seen["kexec_load"], seen["kexec_execute"])
	}
	checkLeadCommands(t, run, j)
}

// TestVMStaging72SegmentOverflow: on the 7.2 staging kernel (CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB=0:
// half a page of extra memory, ima_add_kexec_buffer), imakexec kexec --load-only, then 80
// files read before the jump: the list outgrows the segment sized at load, the dump at
// execute cuts the first record that does not fit (ima_dump_measurement_list) and the next
// kernel restores only the whole records before it. Those records were extended into PCR
// 10 and are in no list, so nothing can prove them: the hook's rejoin must refuse, naming
// the overflow (segment size and records carried), and verify must not say verified.
func TestVMStaging72SegmentOverflow(t *testing.T) {
	kernel := testvm.RequireIMAStagingKernel(t)
	sc := scenario("staging72-segment-overflow", kernel, 1)
	staging72(sc)
	sc.Config.LoadOnly = true
	sc.Config.AfterLoad = 80
	run := execute(t, sc)
	old, err := e2e.ReadList(run.Gens[0].Blobs["at-kexec/binary_runtime_measurements"])
	if err != nil || len(old) == 0 {
		t.Fatalf("the old kernel's list at the jump: %d records, %v", len(old), err)
	}
	g := run.Gens[1]
	live, err := e2e.ReadList(g.Blobs["final/binary_runtime_measurements"])
	if err != nil {
		t.Fatal(err)
	}
	carried := -1
	for i := range live {
		if e2e.Name(&live[i]) == "boot_aggregate" {
			carried = i
		}
	}
	t.Logf("old list at the jump: %d records (the kexec_execute record comes after); the next kernel carried %d", len(old), carried)
	if carried <= 0 || carried >= len(old) {
		t.Fatalf("the next kernel carried %d records of the %d the old one held at the jump: the list did not outgrow the segment", carried, len(old))
	}
	hook := strings.TrimSpace(string(g.Blobs["hook.txt"]))
	t.Logf("hook (exit %d): %s", g.HookExit, hook)
	want := fmt.Sprintf("it carried only %d of its records", carried)
	if g.HookExit == 0 || !strings.Contains(hook, "outgrew the kexec segment sized at load") || !strings.Contains(hook, want) {
		t.Errorf("the hook does not name the segment overflow (%q): exit %d: %s", want, g.HookExit, hook)
	}
	// The carried head is the old list's longest prefix that fits the segment: the dump
	// stops at the first record that does not (ima_dump_measurement_list).
	seg := segmentAtLoad(t, old)
	size := uint64(serialize.KexecHeaderSize)
	for i := 0; i < carried; i++ {
		a, b := &live[i], &old[i]
		if a.PCR != b.PCR || a.Template != b.Template || !bytes.Equal(a.Digest, b.Digest) || !bytes.Equal(a.Data, b.Data) {
			t.Fatalf("carried record %d differs from the old kernel's record %d", i, i)
		}
		size += uint64(serialize.RecordSize(&old[i], serialize.SHA1Size))
	}
	next := size + uint64(serialize.RecordSize(&old[carried], serialize.SHA1Size))
	t.Logf("segment %d bytes; carried %d bytes; with the next record %d", seg, size, next)
	if size > seg || next <= seg {
		t.Errorf("the kernel carried %d bytes of a %d-byte segment, the next record would end at %d: not the longest prefix that fits", size, seg, next)
	}
	mark := fmt.Sprintf("verify gen=%d exit=", g.N)
	if !hasMarkPrefix(run, mark) {
		t.Fatalf("verify did not run in the last generation (no %q mark)", mark)
	}
	if run.Result.Stream.HasMark(mark + "0") {
		t.Errorf("verify says verified although records the TPM holds are in no list: %s", g.Blobs["verify.json"])
	}
}

// segmentAtLoad is kexec_segment_size from the last kexec_load record of a list
// (ima_measure_kexec_event).
func segmentAtLoad(t *testing.T, recs []serialize.Record) uint64 {
	t.Helper()
	for i := len(recs) - 1; i >= 0; i-- {
		if e2e.Name(&recs[i]) != "kexec_load" {
			continue
		}
		fields, err := serialize.ParseFields(&recs[i], binary.LittleEndian)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fields {
			if f.ID != serialize.FieldBuf {
				continue
			}
			v, _, _ := strings.Cut(strings.TrimPrefix(string(f.Data), "kexec_segment_size="), ";")
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("kexec_load payload %q: %v", f.Data, err)
			}
			return n
		}
	}
	t.Fatal("no kexec_load record in the old kernel's list (policy CRITICAL_DATA label=ima_kexec)")
	return 0
}

func hasMarkPrefix(run *e2e.Run, prefix string) bool {
	for _, m := range run.Result.Stream.Marks() {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}
