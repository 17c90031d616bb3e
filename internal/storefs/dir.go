package storefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Dir is an open directory of a store. Every name given to its methods is one path
// component, resolved with the *at system calls (openat, mkdirat, renameat, unlinkat,
// fstatat) from the directory's descriptor and never through a symlink, so a symlink put
// in place of the directory, of a parent or of the file after the directory was opened and
// checked is never followed: writes land in the directory that was checked, or fail.
type Dir struct {
	f *os.File
}

// OpenDir opens and checks the store directory dir (OpenRoot).
func OpenDir(dir string) (*Dir, error) {
	f, err := OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	return &Dir{f: f}, nil
}

// DirOf wraps an open directory (for directories that are not part of a store and so are
// not owner-checked, such as the parent of a marker file).
func DirOf(f *os.File) *Dir { return &Dir{f: f} }

// Name is the directory's path, for messages.
func (d *Dir) Name() string { return d.f.Name() }

// Fd is the directory's descriptor.
func (d *Dir) Fd() int { return int(d.f.Fd()) }

// Close closes the directory.
func (d *Dir) Close() error { return d.f.Close() }

// Sync fsyncs the directory, so that creations, renames and removals in it are durable.
func (d *Dir) Sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", d.Name(), err)
	}
	return nil
}

func (d *Dir) path(name string) string { return filepath.Join(d.Name(), name) }

func component(name string) error {
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("%w: store file name %q is not one path component", ErrUnsafe, name)
	}
	return nil
}

// pathErr names a failed *at call, saying so when name is a symlink.
func (d *Dir) pathErr(op, name string, err error) error {
	var st unix.Stat_t
	if errors.Is(err, unix.ELOOP) || (errors.Is(err, unix.ENOTDIR) && unix.Fstatat(d.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK) {
		err = fmt.Errorf("is a symlink; the store does not follow symlinks: %w", err)
	}
	return &os.PathError{Op: op, Path: d.path(name), Err: err}
}

// Sub opens the subdirectory name (O_DIRECTORY|O_NOFOLLOW) and checks it like the store
// (CheckOwnedFd). With create, a missing one is made with mode perm (mkdirat) and the
// directory is fsynced so the new entry is durable.
func (d *Dir) Sub(name string, create bool, perm uint32) (*Dir, error) {
	if err := component(name); err != nil {
		return nil, err
	}
	if create {
		err := unix.Mkdirat(d.Fd(), name, perm)
		if err == nil {
			if err := d.Sync(); err != nil {
				return nil, err
			}
		} else if !errors.Is(err, unix.EEXIST) {
			return nil, &os.PathError{Op: "mkdir", Path: d.path(name), Err: err}
		}
	}
	fd, err := unix.Openat(d.Fd(), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.pathErr("open", name, err)
	}
	if err := CheckOwnedFd(fd, d.path(name), true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Dir{f: os.NewFile(uintptr(fd), d.path(name))}, nil
}

// Mkdir makes the subdirectory name (mkdirat); it fails if name exists.
func (d *Dir) Mkdir(name string, perm uint32) error {
	if err := component(name); err != nil {
		return err
	}
	if err := unix.Mkdirat(d.Fd(), name, perm); err != nil {
		return &os.PathError{Op: "mkdir", Path: d.path(name), Err: err}
	}
	return nil
}

// Open opens the file name with flag (O_NOFOLLOW and O_CLOEXEC added; give O_NONBLOCK
// for anything that may not be a regular file yet) and checks it is a regular file owned
// by the running user that no one else may write.
func (d *Dir) Open(name string, flag int, perm uint32) (*os.File, error) {
	if err := component(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(d.Fd(), name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if err != nil {
		return nil, d.pathErr("open", name, err)
	}
	if err := CheckOwnedFd(fd, d.path(name), false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), d.path(name)), nil
}

// Create creates the new file name (O_CREAT|O_EXCL: never an existing file or a symlink).
func (d *Dir) Create(name string, flag int, perm uint32) (*os.File, error) {
	return d.Open(name, flag|unix.O_CREAT|unix.O_EXCL, perm)
}

// Remove unlinks the file name (unlinkat; a symlink is removed, not followed).
func (d *Dir) Remove(name string) error {
	if err := component(name); err != nil {
		return err
	}
	if err := unix.Unlinkat(d.Fd(), name, 0); err != nil {
		return &os.PathError{Op: "remove", Path: d.path(name), Err: err}
	}
	return nil
}

// Rename renames old in d to name in to (renameat): both names are resolved from the
// directories' descriptors.
func (d *Dir) Rename(old string, to *Dir, name string) error {
	if err := component(old); err != nil {
		return err
	}
	if err := component(name); err != nil {
		return err
	}
	if err := unix.Renameat(d.Fd(), old, to.Fd(), name); err != nil {
		return &os.LinkError{Op: "rename", Old: d.path(old), New: to.path(name), Err: err}
	}
	return nil
}

// Lstat is fstatat(name, AT_SYMLINK_NOFOLLOW).
func (d *Dir) Lstat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := component(name); err != nil {
		return st, err
	}
	if err := unix.Fstatat(d.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, &os.PathError{Op: "stat", Path: d.path(name), Err: err}
	}
	return st, nil
}

// Names lists the directory's entries (read from a fresh descriptor of it).
func (d *Dir) Names() ([]string, error) {
	fd, err := unix.Openat(d.Fd(), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.Name(), Err: err}
	}
	f := os.NewFile(uintptr(fd), d.Name())
	defer f.Close()
	return f.Readdirnames(-1)
}

// WriteFileAtomic writes data as the file name of d crash-safely: a temp file
// (".NAME.tmp") created in d, written, fsynced, renamed over name, and d fsynced, every step
// relative to d's descriptor. A crash leaves the old file or the new one, and at most a
// temp file that the next writer removes.
func (d *Dir) WriteFileAtomic(name string, data []byte, perm uint32) error {
	if err := component(name); err != nil {
		return err
	}
	tmp := "." + name + ".tmp"
	_ = d.Remove(tmp)
	f, err := d.Create(tmp, unix.O_WRONLY, perm)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		f.Close()
		_ = d.Remove(tmp)
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fail(fmt.Errorf("write %s: %w", f.Name(), err))
	}
	if err := f.Sync(); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", f.Name(), err))
	}
	if err := f.Close(); err != nil {
		_ = d.Remove(tmp)
		return err
	}
	if err := d.Rename(tmp, d, name); err != nil {
		_ = d.Remove(tmp)
		return err
	}
	return d.Sync()
}
