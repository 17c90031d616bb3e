// Package testvm runs throwaway Linux VMs for tests: QEMU with TCG (no KVM
// needed), one vCPU, a fresh swtpm TPM 2.0 per VM, the Debian cloud kernel or
// a CONFIG_IMA_KEXEC=y kernel, and an initramfs whose /init is a static Go
// program of this module.
//
// Host side, in a test:
//
//	func TestMain(m *testing.M) { testvm.Main(m) } // removes cached images
//
//	func TestSomething(t *testing.T) {
//		kernel := testvm.Require(t) // skips (fails under $CI) if QEMU, swtpm or a kernel is missing
//		initrd := testvm.ImageT(t, &testvm.Image{
//			Init:     testvm.ModulePath + "/testvm/guest/imacapture",
//			Programs: map[string]string{"bin/hello": testvm.ModulePath + "/testvm/guest/hello"},
//			Files:    map[string]string{"boot/vmlinuz": kernel},
//		})
//		res := testvm.Boot(t, testvm.Machine{Kernel: kernel, Initramfs: initrd, Append: "ima_template=ima-ng"})
//		list, _ := res.Stream.Blob("binary_runtime_measurements")
//		...
//	}
//
// Guest side, the /init program uses package testvm/guestlib (mounts,
// console, command line, IMA and PCR snapshots, frames on ttyS1, poweroff);
// the data comes back to the host through package testvm/frame.
//
// Environment: IMAKEXEC_KERNEL, IMAKEXEC_IMA_KEXEC_KERNEL, IMAKEXEC_IMA_STAGING_KERNEL,
// IMAKEXEC_DEBIAN72_KERNEL, IMAKEXEC_CACHE, IMAKEXEC_NO_FETCH (FindKernel,
// FindBuiltKernel, FindDebian72Kernel: kernels are fetched or built into the cache when
// missing); IMAKEXEC_QEMU,
// IMAKEXEC_VM_TIMEOUT (Machine); IMAKEXEC_VM_CONSOLE (Boot streams the
// console to t.Logf); CI (Require fails instead of skipping).
//
// The end-to-end scenarios (real imakexec in the guest: hook, drain, initramfs, kexec,
// rejoin, verify, export) are in package testvm/e2e, with the guest agent
// testvm/guest/kexecagent and its config testvm/agentconf; testvm/cmd/demo is make demo.
//
// Only one VM should run at a time on a small machine: each TCG VM keeps a
// core busy. Boot does not serialize VMs; do not mark VM tests t.Parallel.
package testvm
