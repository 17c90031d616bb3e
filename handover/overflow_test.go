package handover

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// TestRejoinSegmentOverflow: on 6.16 and 7.2 the kexec segment is sized at kexec_file_load
// (list plus CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB) and filled at execute; records measured
// after the load that do not fit are cut (ima_dump_measurement_list), the next kernel
// restores only the whole records before the cut, and the TPM holds the extends of all of
// them. Rejoin must name that cause with the segment size and the counts, and store nothing.
func TestRejoinSegmentOverflow(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile kmodel.Profile
		// drainAfter: the last drain is after the records that outgrow the segment (so the
		// store proves the overflow); otherwise right before the load.
		drainAfter bool
	}{
		{"6.16/drain-after-load", kmodel.Profile616, true},
		{"6.16/drain-before-load", kmodel.Profile616, false},
		{"7.2/drain-after-load", kmodel.Profile72, true},
		{"7.2/drain-before-load", kmodel.Profile72, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: tc.profile, ExtraMemoryKB: 1, Policy: overflowPolicy})
			e.work(5)
			if _, err := e.rejoin(nil); err != nil {
				t.Fatal(err)
			}
			e.work(10)
			if !tc.drainAfter {
				e.mustDrain("auto")
			}
			kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("k")}
			initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("i")}
			lr, err := e.k.KexecLoadFiles(kernel, initrd, "console=ttyS0")
			if err != nil {
				t.Fatal(err)
			}
			if lr.SegmentSize == 0 {
				t.Fatalf("no segment at load: %+v", lr)
			}
			// 1 KiB of extra memory: 100 records of ~90 bytes outgrow it.
			e.work(100)
			if tc.drainAfter {
				// 7.2 drains stage and delete (records the store then holds and the
				// kernel no longer carries); 6.16 drains snapshot and keep.
				e.mustDrain("auto")
			}
			xr, err := e.k.KexecExecuteResult()
			if err != nil {
				t.Fatal(err)
			}
			if tc.profile == kmodel.Profile72 && tc.drainAfter {
				// Everything was deleted after the drain: only the kexec_execute record
				// and nothing to outgrow; this variant checks that no overflow is claimed.
				if xr.Truncated {
					t.Fatalf("a deleted list overflowed: %+v", xr)
				}
				if _, err := e.rejoin(windowInputs(kernel, initrd, "console=ttyS0")); err != nil {
					t.Fatalf("rejoin after a complete carry: %v", err)
				}
				e.mustVerify("complete carry")
				return
			}
			if !xr.Truncated || xr.Restored == 0 || xr.RestoreError == "" {
				t.Fatalf("the model did not cut the dump: %+v", xr)
			}
			before, _ := OpenStore(e.store)
			n := before.Records()
			_, err = e.rejoin(windowInputs(kernel, initrd, "console=ttyS0"))
			var je *JoinError
			if !errors.As(err, &je) || je.Overflow == nil {
				t.Fatalf("want a JoinError naming the segment overflow, got %v", err)
			}
			o := je.Overflow
			if o.SegmentSize != uint64(lr.SegmentSize) || o.Carried != xr.Restored {
				t.Errorf("overflow %+v: want segment %d, carried %d", o, lr.SegmentSize, xr.Restored)
			}
			if o.CarriedB > o.SegmentSize || o.ListBytes < o.CarriedB {
				t.Errorf("overflow figures do not add up: %+v", o)
			}
			if o.Proven != tc.drainAfter {
				t.Errorf("proven=%v with drainAfter=%v: %+v", o.Proven, tc.drainAfter, o)
			}
			for _, want := range []string{"outgrew the kexec segment sized at load", "carried only"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("rejoin error %q lacks %q", err, want)
				}
			}
			// The lost records were extended into the TPM and are in no list: the log
			// cannot verify, and verify must say so.
			_, cause, verr := verdictOf(Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()}))
			if verr != nil || cause == nil {
				t.Errorf("verify after the overflow: verified=%v err=%v", cause == nil, verr)
			}
			after, _ := OpenStore(e.store)
			if after.Records() != n {
				t.Errorf("a failed join changed the store: %d -> %d records", n, after.Records())
			}
		})
	}
}

// overflowPolicy measures files and the ima_kexec critical data, not the kexec functions
// (the window's records would be carried or not like any other).
const overflowPolicy = noWindowPolicy + "measure func=CRITICAL_DATA label=ima_kexec\n"
