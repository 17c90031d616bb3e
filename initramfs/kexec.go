package initramfs

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Kexec is the kernel's kexec interface, behind an interface so that the order of
// operations can be tested with a fake that records calls (conventions, habit 3). The real
// one (SysKexec) runs only in the VM tests.
type Kexec interface {
	// FileLoad calls kexec_file_load(kernelFd, initrdFd, cmdline, 0). initrdFd < 0 means
	// no initrd (KEXEC_FILE_NO_INITRAMFS).
	FileLoad(kernelFd, initrdFd int, cmdline string) error
	// Sync flushes file systems before the jump.
	Sync()
	// Reboot executes the loaded kernel: reboot(LINUX_REBOOT_CMD_KEXEC). It returns only on
	// failure.
	Reboot() error
}

// Errors of the kexec step. They wrap the errno where there is one.
var (
	// ErrLegacyOnly: kexec_file_load is not implemented (ENOSYS). The legacy kexec_load
	// never carries the IMA list (ima_add_kexec_buffer runs only from
	// kimage_file_prepare_segments; docs/kernel.md, "kexec: what the next kernel gets").
	ErrLegacyOnly = errors.New("kexec_file_load is not available on this kernel (only the legacy kexec_load, which never carries the IMA measurement list, so imakexec does not use it)")
	// ErrKexecDisabled: /proc/sys/kernel/kexec_load_disabled is 1 (or lockdown refuses).
	ErrKexecDisabled = errors.New("kexec is disabled")
)

// SysKexec is the real kexec interface (golang.org/x/sys/unix).
type SysKexec struct{}

// FileLoad implements Kexec.
func (SysKexec) FileLoad(kernelFd, initrdFd int, cmdline string) error {
	flags := 0
	if initrdFd < 0 {
		flags |= unix.KEXEC_FILE_NO_INITRAMFS
		initrdFd = -1
	}
	return classifyLoadError(kexecFileLoad(kernelFd, initrdFd, cmdline, flags))
}

func classifyLoadError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("kexec_file_load: %w: %w", ErrLegacyOnly, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("kexec_file_load: needs CAP_SYS_BOOT, and kexec_load_disabled=0; under lockdown or an IMA appraise policy the kernel must be signed: %w: %w", ErrKexecDisabled, err)
	case errors.Is(err, unix.EKEYREJECTED), errors.Is(err, unix.EBADMSG):
		return fmt.Errorf("kexec_file_load: the kernel image signature was rejected: %w", err)
	case errors.Is(err, unix.ENOEXEC):
		return fmt.Errorf("kexec_file_load: the kernel image format is not supported by the running kernel: %w", err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("kexec_file_load: invalid argument (command line too long for the architecture's COMMAND_LINE_SIZE?): %w", err)
	default:
		return fmt.Errorf("kexec_file_load: %w", err)
	}
}

// Sync implements Kexec: sync, then remount local filesystems read-only or freeze them
// (Quiesce), so that the direct jump leaves no journal to recover.
func (SysKexec) Sync() { Quiesce() }

// Reboot implements Kexec.
func (SysKexec) Reboot() error {
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC); err != nil {
		Thaw()
		return fmt.Errorf("reboot(LINUX_REBOOT_CMD_KEXEC): %w", err)
	}
	return nil
}

// kexecDisabled reads proc/sys/kernel/kexec_load_disabled below procDir: "" when kexec may
// be used or the file is absent, else a reason.
func kexecDisabled(procDir string) string {
	b, err := readKernelFile(filepath.Join(procDir, "sys", "kernel", "kexec_load_disabled"), 64)
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return "proc/sys/kernel/kexec_load_disabled is 1 (it cannot be reset without a reboot)"
	}
	return ""
}
