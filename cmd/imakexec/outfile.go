package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// output is a command's output file (convert OUT, export -o). A new name or a regular file
// is written crash-safely: a temp file beside it, fsynced and renamed over it, so a failed
// run leaves the old file whole. A character device or FIFO is written in place (renaming
// over /dev/null would replace the device with a regular file). A symlink is refused: name
// its target. Anything else (directory, block device, socket) is refused.
type output struct {
	f     *os.File
	name  string
	tmp   string // temp file renamed over name at commit; "" when written in place
	owned bool
}

func createOutput(name string) (*output, error) {
	fi, err := os.Lstat(name)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	case fi.Mode()&os.ModeSymlink != 0:
		return nil, fmt.Errorf("output %s is a symlink; name the file it points to", name)
	case fi.Mode().IsRegular():
	case fi.Mode()&os.ModeCharDevice != 0, fi.Mode()&os.ModeNamedPipe != 0:
		f, err := os.OpenFile(name, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		return &output{f: f, name: name}, nil
	case fi.Mode()&os.ModeSocket != 0:
		return nil, fmt.Errorf("output %s is a socket; write to stdout and connect it instead", name)
	default:
		return nil, fmt.Errorf("output %s is not a regular file, character device or FIFO (%v)", name, fi.Mode().Type())
	}
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".imakexec-*")
	if err != nil {
		return nil, err
	}
	return &output{f: f, name: name, tmp: f.Name(), owned: true}, nil
}

// seekable returns the output as a seekable file (a temp file), or nil when written in
// place (the kexec format then spools: its header needs the final size and count).
func (o *output) seekable() *os.File {
	if o.tmp == "" {
		return nil
	}
	return o.f
}

// commit makes the output final: fsync and rename for a temp file.
func (o *output) commit() error {
	if o.tmp == "" {
		return o.f.Close()
	}
	if err := o.f.Sync(); err != nil {
		return err
	}
	if err := o.f.Close(); err != nil {
		return err
	}
	// The target may have become something else since it was looked at: check again.
	if fi, err := os.Lstat(o.name); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("output %s is no longer a regular file; not replacing it", o.name)
	}
	if err := os.Rename(o.tmp, o.name); err != nil {
		return err
	}
	o.tmp = ""
	if d, err := os.Open(filepath.Dir(o.name)); err == nil {
		defer d.Close()
		return d.Sync()
	}
	return nil
}

// abort removes a temp file; nothing of the target changes.
func (o *output) abort() {
	o.f.Close()
	if o.tmp != "" {
		os.Remove(o.tmp)
	}
}

// appender writes an output in place over an existing file that must already hold a prefix
// of it, byte for byte (export --append): bytes the file has are compared, the rest is
// written after them. A reader that keeps the file open sees it only grow. A file cut
// short inside a record (a crash during an earlier append) is completed.
type appender struct {
	f    *os.File
	name string
	size int64 // the file's size when opened
	off  int64
	buf  []byte
}

func openAppend(name string) (*appender, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0o644)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("--append %s is a symlink; name the file it points to", name)
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("--append %s is not a regular file", name)
	}
	return &appender{f: f, name: name, size: fi.Size()}, nil
}

func (a *appender) Write(p []byte) (int, error) {
	n := len(p)
	if a.off < a.size {
		k := min(int64(len(p)), a.size-a.off)
		if cap(a.buf) < int(k) {
			a.buf = make([]byte, k)
		}
		have := a.buf[:k]
		if _, err := a.f.ReadAt(have, a.off); err != nil {
			return 0, fmt.Errorf("read %s: %w", a.name, err)
		}
		if i := mismatch(have, p[:k]); i >= 0 {
			return 0, fmt.Errorf("%s differs from the chain's export at byte %d: it is not an earlier export of this chain in this format (a new power cycle starts a new file); nothing was written", a.name, a.off+int64(i))
		}
		a.off += k
		p = p[k:]
	}
	if len(p) > 0 {
		if _, err := a.f.WriteAt(p, a.off); err != nil {
			return 0, fmt.Errorf("append to %s: %w", a.name, err)
		}
		a.off += int64(len(p))
	}
	return n, nil
}

func mismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// finish checks the file held no more than the output and fsyncs what was appended.
func (a *appender) finish() (appended int64, err error) {
	defer a.f.Close()
	if a.off < a.size {
		return 0, fmt.Errorf("%s holds %d bytes, more than the chain's export (%d bytes): it is not an earlier export of this chain; nothing was written", a.name, a.size, a.off)
	}
	if err := a.f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", a.name, err)
	}
	return a.off - a.size, nil
}

var _ io.Writer = (*appender)(nil)
