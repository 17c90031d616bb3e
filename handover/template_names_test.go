package handover

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// TestRejoinCustomFormatCarried: with ima_template_fmt=d-ng|n-ng the list names records
// "d-ng|n-ng"; the next kernel restores them as "ima-ng" (lookup_template_desc). The join
// must still recognise the carried head as the stored records, for a copy at load (6.1)
// and at execute (7.2), and the joined chain must verify against the TPM.
//
// Still open for 6.1: Store.Check compares the duplicate segment's boot hash (a SHA-256
// over the records including their template names) with the stored one, so it reports the
// renamed carried head as not repeating the stored records; the boot hash belongs to the
// store format and is not changed here.
func TestRejoinCustomFormatCarried(t *testing.T) {
	for _, p := range []kmodel.Profile{kmodel.Profile61IMAKexec, kmodel.Profile72} {
		t.Run(string(p), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: p, Template: "d-ng|n-ng"})
			if _, err := e.rejoin(nil); err != nil {
				t.Fatalf("first rejoin: %v", err)
			}
			e.work(4)
			e.mustDrain("snapshot")
			kernel := kmodel.File{Path: "/boot/vmlinuz-next", Content: []byte("kernel image")}
			initrd := kmodel.File{Path: "memfd:imakexec-initrd", Content: []byte("initrd")}
			cmdline := fmt.Sprintf("console=ttyS0 imakexec.initrd=sha256:%x", sha256.Sum256(initrd.Content))
			if _, err := e.k.KexecLoadFiles(kernel, initrd, cmdline); err != nil {
				t.Fatal(err)
			}
			res, err := e.k.KexecExecuteResult()
			if err != nil {
				t.Fatal(err)
			}
			if res.Restored == 0 || e.k.List()[1].Template != "ima-ng" {
				t.Fatalf("the model did not restore as ima-ng: %+v", res)
			}
			r, err := e.rejoin(windowInputs(kernel, initrd, cmdline))
			if err != nil {
				t.Fatalf("rejoin: %v", err)
			}
			if r.Join == nil || r.Join.KernelCarried == 0 {
				t.Fatalf("join %+v: the carried head was not recognised", r.Join)
			}
			v, err := Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()})
			if err != nil || v.Extra != 0 {
				t.Fatalf("verify after the kexec: %+v, %v", v, err)
			}
			if p == kmodel.Profile72 {
				e.mustVerify("after the kexec")
			}
		})
	}
}
