package conformance_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/conformance"
)

func TestMain(m *testing.M) { testvm.Main(m) }

// TestVMConformance runs the table inside QEMU on the real 7.2 kernels: the one built with
// CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y, and Debian's own 7.2 cloud kernel (neither).
// Every row a real kernel can show must give the answer the table (and the model) gives.
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
			initrd := testvm.ImageT(t, &testvm.Image{Init: testvm.ModulePath + "/testvm/guest/conform"})
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
			if err := json.Unmarshal(b, &rows); err != nil {
				t.Fatalf("conformance blob: %v", err)
			}
			for _, r := range rows {
				t.Logf("%-55s %s", r.Name, r.Got)
			}
			for _, d := range conformance.Compare(rows, tc.kind, true) {
				t.Error(d)
			}
		})
	}
}
