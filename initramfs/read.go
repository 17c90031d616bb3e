package initramfs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// readLimited reads r to its end and fails, naming the input, when it holds more than
// max bytes. It is the one bounded read of initramfs: every input (kernel files below
// /proc, files for the image, the store before the drain, the carried store after the
// jump) comes through it, so no input costs more memory than its bound.
func readLimited(r io.Reader, name string, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: more than %d bytes", name, max)
	}
	return b, nil
}

// readRegular reads a regular file without following a symlink (O_NOFOLLOW, so a
// symlink planted in place of the file is refused rather than read), at most max bytes,
// checking the size before reading and again while reading (the file may grow).
func readRegular(name string, max int64) ([]byte, error) { return readRegularFile(name, max, false) }

// readRegularFile is readRegular; with follow, a symlink is followed (the operator's own
// inputs, such as /boot/vmlinuz, which is one on Debian).
func readRegularFile(name string, max int64, follow bool) ([]byte, error) {
	flags := os.O_RDONLY | syscall.O_CLOEXEC | syscall.O_NONBLOCK
	if !follow {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(name, flags, 0)
	if err != nil {
		if !follow && errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink", name)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes (limit %d)", name, fi.Size(), max)
	}
	return readLimited(f, name, max)
}

// readKernelFile reads a small procfs or sysfs file (their size is not known before
// reading: stat says 0), at most max bytes.
func readKernelFile(name string, max int64) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, name, max)
}

// readInput reads an input of the kexec flow through KexecOptions.Open (which tests
// trace), at most max bytes.
func readInput(o KexecOptions, name string, max int64) ([]byte, error) {
	f, err := o.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, name, max)
}
