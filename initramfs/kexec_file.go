//go:build linux && (amd64 || arm || arm64 || loong64 || ppc || ppc64 || ppc64le || riscv64 || s390x)

package initramfs

import "golang.org/x/sys/unix"

// kexecFileLoad is kexec_file_load(2) on the architectures whose kernels have it (x/sys
// defines it where the syscall exists).
func kexecFileLoad(kernelFd, initrdFd int, cmdline string, flags int) error {
	return unix.KexecFileLoad(kernelFd, initrdFd, cmdline, flags)
}
