package e2e_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/e2e"
)

// drainJSON is the part of `imakexec drain --json` these tests read.
type drainJSON struct {
	Backend   string `json:"backend"`
	Stored    uint64 `json:"stored"`
	Deleted   uint64 `json:"deleted"`
	Suspended bool   `json:"suspended"`
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

// TestVMStaging72: the 7.2 kernel with CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y: the
// drain picks staged (A, read, D) and deletes for real; the kexec_load and kexec_execute
// critical data are measured (policy CRITICAL_DATA label=ima_kexec) and carried at
// execute with the records measured after the last drain; the joined log verifies.
func TestVMStaging72(t *testing.T) {
	kernel := testvm.RequireIMAStagingKernel(t)
	sc := scenario("staging72", kernel, 1)
	sc.KernelCarries = true
	sc.Config.Policy += "measure func=CRITICAL_DATA label=ima_kexec\n"
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
	sc.KernelCarries = true
	sc.Config.Policy += "measure func=CRITICAL_DATA label=ima_kexec\n"
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
