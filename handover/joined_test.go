package handover

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// TestJoinWithoutSegment: a 7.2 kernel that was drained right before the kexec, with no
// kexec-window measurement, carries nothing, so rejoin joins the new boot with a join entry
// and no segment; the drain that follows in Rejoin stores the new boot's records, and
// until it has (it failed, or a crash came first) the join entry is all there is. Drain,
// export and the live view must all take that boot as joined (one rule, Store.joined),
// and export and the view must cover the same log verify proves.
func TestJoinWithoutSegment(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72, Policy: noWindowPolicy})
	e.work(8)
	if _, err := e.rejoin(nil); err != nil {
		t.Fatal(err)
	}
	e.work(6)
	e.mustDrain(BackendStaged)
	kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("kernel image")}
	initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("initrd with handoff")}
	cmdline := fmt.Sprintf("console=ttyS0 imakexec.initrd=sha256:%x", sha256.Sum256(initrd.Content))
	if _, err := e.k.KexecLoadFiles(kernel, initrd, cmdline); err != nil {
		t.Fatal(err)
	}
	if err := e.k.KexecExecute(); err != nil {
		t.Fatal(err)
	}
	e.work(3)
	ki, err := ReadKernelInfo(e.paths)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ProbeKernel(e.paths)
	if err != nil {
		t.Fatal(err)
	}
	// The join alone, without Rejoin's drain after it.
	r := &RejoinResult{BootID: ki.BootID}
	if err := rejoinLocked(context.Background(), RejoinOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), Window: windowInputs(kernel, initrd, cmdline)}, ki, k, r); err != nil {
		t.Fatal(err)
	}
	s, err := OpenStore(e.store)
	if err != nil {
		t.Fatal(err)
	}
	// The case under test: a join entry, no segment of the new boot.
	if r.Join == nil || r.Join.KernelCarried != 0 || s.Boot(ki.BootID) != nil || s.joinOf(ki.BootID) == nil {
		t.Fatalf("rejoin stored segments of the new boot or no join entry: join %+v, boot %+v", r.Join, s.Boot(ki.BootID))
	}
	v := e.mustVerify("after the join")
	recs := exportAll(t, e)
	if uint64(len(recs)) != v.Records {
		t.Fatalf("export of a boot joined without a segment: %d records, verify proved %d", len(recs), v.Records)
	}
	sn, err := ReadSnapshot(context.Background(), SnapshotOptions{Paths: e.paths, StoreDir: e.store})
	if err != nil {
		t.Fatal(err)
	}
	if !sn.Joined || sn.Records() != v.Records {
		t.Fatalf("live view of a boot joined without a segment: joined=%v, %d records, verify proved %d", sn.Joined, sn.Records(), v.Records)
	}
	// Drain stores the new boot from index 0, and everything still verifies.
	e.work(4)
	e.mustDrain(BackendStaged)
	if bs := func() *BootState { s, _ := OpenStore(e.store); return s.Boot(ki.BootID) }(); bs == nil || bs.Generation != r.Generation {
		t.Fatalf("drain after a join without segment: boot state %+v, want generation %d", bs, r.Generation)
	}
	e.mustVerify("after the drain")
	if got := exportAll(t, e); uint64(len(got)) != e.mustVerify("again").Records {
		t.Fatalf("export after the drain: %d records", len(got))
	}
}
