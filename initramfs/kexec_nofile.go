//go:build !linux || !(amd64 || arm || arm64 || loong64 || ppc || ppc64 || ppc64le || riscv64 || s390x)

package initramfs

import "golang.org/x/sys/unix"

// kexecFileLoad fails with ENOSYS where the kernel has no kexec_file_load (i386: KEXEC_FILE
// depends on X86_64; mips): imakexec then refuses with ErrLegacyOnly, as on a kernel
// built without CONFIG_KEXEC_FILE.
func kexecFileLoad(kernelFd, initrdFd int, cmdline string, flags int) error {
	return unix.ENOSYS
}
