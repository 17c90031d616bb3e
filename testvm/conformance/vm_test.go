package conformance_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/conformance"
)

func TestMain(m *testing.M) { testvm.Main(m) }

// TestVMConformance runs the table inside QEMU on the real 7.2 kernels: the one built with
// CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y, and Debian's own 7.2 cloud kernel (neither).
// The guest first kexecs through every state of conformance.StatesFor (one real kexec
// each), then runs the file rows in the last kernel. Every row a real kernel can show must
// give the answer the table (and the model) gives.
func TestVMConformance(t *testing.T) {
	for _, tc := range []struct {
		name    string
		kind    conformance.Kind
		require func(testing.TB) string
	}{
		{"7.2-ima-staging", conformance.Staging, testvm.RequireIMAStagingKernel},
		{"debian-7.2", conformance.NoStaging, testvm.RequireDebian72Kernel},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kernel := tc.require(t)
			initrd := testvm.ImageT(t, &testvm.Image{Init: testvm.ModulePath + "/testvm/guest/conform",
				Files: map[string]string{"boot/vmlinuz": kernel}})
			start := time.Now()
			res := testvm.Boot(t, testvm.Machine{
				Kernel: kernel, Initramfs: initrd,
				Append: "ima_template=ima-ng ima_hash=sha256 conform.kind=" + string(tc.kind),
			})
			t.Logf("%s: VM %.1f s", tc.name, time.Since(start).Seconds())
			b, ok := res.Stream.Blob("conformance")
			if !ok {
				t.Fatal("the guest sent no conformance blob")
			}
			var rows []conformance.Row
			for i, st := range conformance.StatesFor(tc.kind) {
				var before conformance.Before
				var after conformance.After
				for _, x := range []struct {
					name string
					v    any
				}{{fmt.Sprintf("kexec/%d/before", i), &before}, {fmt.Sprintf("kexec/%d/after", i), &after}} {
					raw, ok := res.Stream.Blob(x.name)
					if !ok {
						t.Fatalf("state %q: the guest sent no %s", st.Name, x.name)
					}
					if err := json.Unmarshal(raw, x.v); err != nil {
						t.Fatalf("%s: %v", x.name, err)
					}
				}
				rows = append(rows, conformance.AfterRows(before, after)...)
			}
			var fileRows []conformance.Row
			if err := json.Unmarshal(b, &fileRows); err != nil {
				t.Fatalf("conformance blob: %v", err)
			}
			rows = append(rows, fileRows...)
			for _, r := range rows {
				t.Logf("%-55s %s", r.Name, r.Got)
			}
			for _, d := range conformance.Compare(rows, tc.kind, true) {
				t.Error(d)
			}
		})
	}
}
