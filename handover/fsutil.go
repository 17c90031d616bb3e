package handover

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// File modes of the store: files 0600 in 0700 directories, owned by the user imakexec runs
// as (root on a real system). Directories created above the store are 0755.
const (
	dirMode    = 0o700
	fileMode   = 0o600
	parentMode = 0o755
)

// ErrUnsafeStore: the store directory, a file in it or a parent is not what a store may be
// (a symlink, not a directory or regular file, owned by another user, writable by others).
var ErrUnsafeStore = errors.New("unsafe store")

// openNoFollow opens name relative to nothing but refuses a symlink in the last component
// (O_NOFOLLOW) and always sets O_CLOEXEC.
func openNoFollow(name string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm))
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, &os.PathError{Op: "open", Path: name, Err: fmt.Errorf("is a symlink; the store does not follow symlinks: %w", err)}
		}
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openStoreRoot opens the store directory itself (O_DIRECTORY|O_NOFOLLOW) and checks it
// is a directory owned by the running user that no one else may write.
func openStoreRoot(dir string) (*os.File, error) {
	d, err := openNoFollow(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			// O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP.
			if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
				return nil, fmt.Errorf("%w: %s is a symlink; the store does not follow symlinks", ErrUnsafeStore, dir)
			}
			return nil, fmt.Errorf("%w: %s is not a directory", ErrUnsafeStore, dir)
		}
		return nil, err
	}
	if err := checkOwned(d, dir, true); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// checkOwned fstats an open store file or directory: a directory or regular file as asked,
// owned by the effective uid, not writable by group or others.
func checkOwned(f *os.File, name string, dir bool) error { return checkOwnedFd(int(f.Fd()), name, dir) }

func checkOwnedFd(fd int, name string, dir bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", name, err)
	}
	typ := st.Mode & unix.S_IFMT
	switch {
	case dir && typ != unix.S_IFDIR:
		return fmt.Errorf("%w: %s is not a directory", ErrUnsafeStore, name)
	case !dir && typ != unix.S_IFREG:
		return fmt.Errorf("%w: %s is not a regular file (%s)", ErrUnsafeStore, name, fileType(typ))
	}
	if uid := uint32(os.Geteuid()); st.Uid != uid {
		return fmt.Errorf("%w: %s is owned by uid %d, imakexec runs as uid %d: another user could rewrite the store; refusing it", ErrUnsafeStore, name, st.Uid, uid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%w: %s has mode %04o, writable by group or others; refusing it (chmod go-w it if its contents are trusted)", ErrUnsafeStore, name, st.Mode&0o7777)
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

// openInStore opens rel (a relative name with '/', e.g. "segments/00000001.kexec") below
// the open store directory root with openat, one component at a time, following no
// symlink at any level. flag is the open flag of the last component; O_NOFOLLOW and
// O_CLOEXEC are added. Intermediate directories are checked like the store itself.
func openInStore(root *os.File, dir, rel string, flag int, perm uint32) (*os.File, error) {
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return nil, fmt.Errorf("%w: store file name %q", ErrUnsafeStore, rel)
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
		if err := checkOwnedFd(nfd, name, true); err != nil {
			return nil, err
		}
		fd = nfd
	}
	panic("unreachable")
}

// openStoreFile opens the store file rel of dir for reading: openat from the store
// directory's descriptor without following symlinks, O_NONBLOCK so a FIFO put in place of
// a store file cannot hang open(2), then fstat-checked to be a regular file owned by the
// running user. This is the one way store files are opened for reading.
func openStoreFile(dir, rel string) (*os.File, error) {
	return openStoreFileFlag(dir, rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
}

// openStoreFileFlag is openStoreFile with other open flags (include O_NONBLOCK) and a
// creation mode, for the lock and the manifest append.
func openStoreFileFlag(dir, rel string, flag int, perm uint32) (*os.File, error) {
	root, err := openStoreRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := openInStore(root, dir, rel, flag, perm)
	if err != nil {
		return nil, err
	}
	if err := checkOwned(f, f.Name(), false); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkSubdir checks the directory name of the store dir like the store itself.
func checkSubdir(dir, name string) error {
	root, err := openStoreRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	d, err := openInStore(root, dir, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return checkOwned(d, d.Name(), true)
}

// ReadStoreFile reads the store file name (relative, with '/') of the store directory dir
// as openStoreFile opens it, refusing more than max bytes: a file over the bound is an
// error naming it, never a truncated read.
func ReadStoreFile(dir, name string, max int64) ([]byte, error) {
	f, err := openStoreFile(dir, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readBounded(f, max)
}

// readBounded reads an open regular file whole, refusing more than max bytes.
func readBounded(f *os.File, max int64) ([]byte, error) {
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

// checkDir makes sure dir is a real directory (not a symlink) owned by the running user and
// not writable by others. With create, a missing dir is created 0700, with its missing
// parents (0755; see makeParents), and a dir readable by others is tightened to 0700.
func checkDir(dir string, create bool) error {
	fi, err := os.Lstat(dir)
	if (errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR)) && create {
		if err := makeParents(filepath.Dir(dir)); err != nil {
			return err
		}
		if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		if err := syncDir(filepath.Dir(dir)); err != nil {
			return err
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%w: %s is a symlink; the store does not follow symlinks", ErrUnsafeStore, dir)
	}
	d, err := openStoreRoot(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if create && fi.Mode().Perm()&0o077 != 0 {
		if err := d.Chmod(dirMode); err != nil {
			return fmt.Errorf("%s has mode %v and cannot be made 0700: %w", dir, fi.Mode().Perm(), err)
		}
	}
	return nil
}

// makeParents creates the missing directories of p (0755), after checking every existing
// one: a directory (symlinks to directories are followed: /var/run and the like), owned by
// root when imakexec runs as root (a parent another user owns could be replaced under the
// store), and writable where something must be created in it.
func makeParents(p string) error {
	p = filepath.Clean(p)
	var missing []string
	cur := p
	for {
		fi, err := os.Stat(cur)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%w: parent %s of the store is not a directory", ErrUnsafeStore, cur)
			}
			break
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("parent %s of the store: %w", cur, err)
		}
		missing = append(missing, cur)
		next := filepath.Dir(cur)
		if next == cur {
			break
		}
		cur = next
	}
	// Check the existing ancestors, from the nearest up.
	for a := cur; ; a = filepath.Dir(a) {
		var st unix.Stat_t
		if err := unix.Stat(a, &st); err != nil {
			return fmt.Errorf("parent %s of the store: %w", a, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fmt.Errorf("%w: parent %s of the store is not a directory", ErrUnsafeStore, a)
		}
		if os.Geteuid() == 0 && st.Uid != 0 {
			return fmt.Errorf("%w: parent %s of the store is owned by uid %d, not root: that user could replace the store", ErrUnsafeStore, a, st.Uid)
		}
		if filepath.Dir(a) == a {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], parentMode); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create parent %s of the store: %w", missing[i], parentErr(filepath.Dir(missing[i]), err))
		}
	}
	return nil
}

// parentErr names why a directory could not be created in parent.
func parentErr(parent string, err error) error {
	switch {
	case errors.Is(err, unix.EROFS):
		return fmt.Errorf("%s is on a read-only file system: %w", parent, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s is not writable: %w", parent, err)
	}
	return err
}

// syncDir fsyncs a directory so renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := openNoFollow(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("fsync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	return nil
}

// writeFileAtomic writes data to name crash-safely: temp file in the same directory, write,
// fsync, rename, fsync the directory.
func writeFileAtomic(name string, data []byte) error {
	dir := filepath.Dir(name)
	tmp := filepath.Join(dir, "."+filepath.Base(name)+".tmp")
	_ = os.Remove(tmp)
	f, err := openNoFollow(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, fileMode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}
