// Package storefs opens the files of an imakexec store without trusting the file system:
// openat from the store directory's descriptor, no symlink followed at any level, no FIFO
// or device opened as a file, every file and directory owned by the running user and not
// writable by others, and reads bounded before they allocate. It is the one implementation
// of that rule: package handover (the store itself) and package initramfs (the store copy
// unpacked from a handoff in the next kernel) both read store files through it.
package storefs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsafe: the store directory, a file in it or a parent is not what a store may be
// (a symlink, not a directory or regular file, owned by another user, writable by others).
var ErrUnsafe = errors.New("unsafe store")

// OpenNoFollow opens name relative to nothing but refuses a symlink in the last component
// (O_NOFOLLOW) and always sets O_CLOEXEC.
func OpenNoFollow(name string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm))
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, &os.PathError{Op: "open", Path: name, Err: fmt.Errorf("is a symlink; the store does not follow symlinks: %w", err)}
		}
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// OpenRoot opens the store directory itself (O_DIRECTORY|O_NOFOLLOW) and checks it
// is a directory owned by the running user that no one else may write.
func OpenRoot(dir string) (*os.File, error) {
	d, err := OpenNoFollow(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			// O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP.
			if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
				return nil, fmt.Errorf("%w: %s is a symlink; the store does not follow symlinks", ErrUnsafe, dir)
			}
			return nil, fmt.Errorf("%w: %s is not a directory", ErrUnsafe, dir)
		}
		return nil, err
	}
	if err := CheckOwned(d, dir, true); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// CheckOwned fstats an open store file or directory: a directory or regular file as asked,
// owned by the effective uid, not writable by group or others.
func CheckOwned(f *os.File, name string, dir bool) error { return CheckOwnedFd(int(f.Fd()), name, dir) }

func CheckOwnedFd(fd int, name string, dir bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	typ := st.Mode & unix.S_IFMT
	switch {
	case dir && typ != unix.S_IFDIR:
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafe, name)
	case !dir && typ != unix.S_IFREG:
		return fmt.Errorf("%w: %s is not a regular file (%s)", ErrUnsafe, name, fileType(typ))
	}
	if uid := uint32(os.Geteuid()); st.Uid != uid {
		return fmt.Errorf("%w: %s is owned by uid %d, imakexec runs as uid %d: another user could rewrite the store; refusing it", ErrUnsafe, name, st.Uid, uid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o, writable by group or others; refusing it (chmod go-w it if its contents are trusted)", ErrUnsafe, name, st.Mode&0o7777)
	}
	return nil
}

func fileType(typ uint32) string {
	switch typ {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symlink"
	}
	return fmt.Sprintf("type %#o", typ)
}

// OpenIn opens rel (a relative name with '/', e.g. "segments/00000001.kexec") below
// the open store directory root with openat, one component at a time, following no
// symlink at any level. flag is the open flag of the last component; O_NOFOLLOW and
// O_CLOEXEC are added. Intermediate directories are checked like the store itself.
func OpenIn(root *os.File, dir, rel string, flag int, perm uint32) (*os.File, error) {
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("%w: store file name %q", ErrUnsafe, rel)
		}
	}
	fd := int(root.Fd())
	var opened []int
	defer func() {
		for _, o := range opened {
			unix.Close(o)
		}
	}()
	name := dir
	for i, p := range parts {
		name = filepath.Join(name, p)
		last := i == len(parts)-1
		fl := unix.O_RDONLY | unix.O_DIRECTORY
		if last {
			fl = flag
		}
		nfd, err := unix.Openat(fd, p, fl|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err != nil {
			var st unix.Stat_t
			if errors.Is(err, unix.ELOOP) || (errors.Is(err, unix.ENOTDIR) && unix.Fstatat(fd, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK) {
				return nil, &os.PathError{Op: "open", Path: name, Err: fmt.Errorf("is a symlink; the store does not follow symlinks: %w", err)}
			}
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		if last {
			return os.NewFile(uintptr(nfd), name), nil
		}
		opened = append(opened, nfd)
		if err := CheckOwnedFd(nfd, name, true); err != nil {
			return nil, err
		}
		fd = nfd
	}
	panic("unreachable")
}

// OpenFile opens the store file rel of dir for reading: openat from the store
// directory's descriptor without following symlinks, O_NONBLOCK so a FIFO put in place of
// a store file cannot hang open(2), then fstat-checked to be a regular file owned by the
// running user. This is the one way store files are opened for reading.
func OpenFile(dir, rel string) (*os.File, error) {
	return OpenFileFlag(dir, rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
}

// OpenFileFlag is OpenFile with other open flags (include O_NONBLOCK) and a
// creation mode, for the lock and the manifest append.
func OpenFileFlag(dir, rel string, flag int, perm uint32) (*os.File, error) {
	root, err := OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := OpenIn(root, dir, rel, flag, perm)
	if err != nil {
		return nil, err
	}
	if err := CheckOwned(f, f.Name(), false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckSubdir checks the directory name of the store dir like the store itself.
func CheckSubdir(dir, name string) error {
	root, err := OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	d, err := OpenIn(root, dir, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return CheckOwned(d, d.Name(), true)
}

// ReadFile reads the store file name (relative, with '/') of the store directory dir
// as OpenFile opens it, refusing more than max bytes: a file over the bound is an
// error naming it, never a truncated read.
func ReadFile(dir, name string, max int64) ([]byte, error) {
	f, err := OpenFile(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadBounded(f, max)
}

// ReadBounded reads an open regular file whole, refusing more than max bytes.
func ReadBounded(f *os.File, max int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, more than the limit of %d", f.Name(), fi.Size(), max)
	}
	b := make([]byte, 0, fi.Size())
	b, err = readAllLimit(f, b, max)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return b, nil
}

func readAllLimit(r io.Reader, b []byte, max int64) ([]byte, error) {
	lr := io.LimitReader(r, max+1)
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := lr.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if int64(len(b)) > max {
			return nil, fmt.Errorf("grew beyond the limit of %d bytes while read", max)
		}
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
