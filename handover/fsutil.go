package handover

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imakexec/imakexec/internal/storefs"
	"golang.org/x/sys/unix"
)

// File modes of the store: files 0600 in 0700 directories, owned by the user imakexec runs
// as (root on a real system). Directories created above the store are 0755.
const (
	dirMode    = 0o700
	fileMode   = 0o600
	parentMode = 0o755
)

// The store's safe opens live in internal/storefs (shared with the initramfs handoff
// reader); these are the names handover uses.
var ErrUnsafeStore = storefs.ErrUnsafe

func openNoFollow(name string, flag int, perm os.FileMode) (*os.File, error) {
	return storefs.OpenNoFollow(name, flag, perm)
}
func openStoreRoot(dir string) (*os.File, error)         { return storefs.OpenRoot(dir) }
func checkOwned(f *os.File, name string, dir bool) error { return storefs.CheckOwned(f, name, dir) }
func openStoreFile(dir, rel string) (*os.File, error)    { return storefs.OpenFile(dir, rel) }
func checkSubdir(dir, name string) error                 { return storefs.CheckSubdir(dir, name) }
func openStoreFileFlag(dir, rel string, flag int, perm uint32) (*os.File, error) {
	return storefs.OpenFileFlag(dir, rel, flag, perm)
}

// ReadStoreFile reads the store file name (relative, with '/') of the store directory dir,
// refusing more than max bytes (storefs.ReadFile).
func ReadStoreFile(dir, name string, max int64) ([]byte, error) {
	return storefs.ReadFile(dir, name, max)
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

// writeFileAtomic writes data to name crash-safely (storefs.Dir.WriteFileAtomic: temp file
// in the same directory, write, fsync, rename, fsync the directory), every step relative
// to the directory opened once without following a symlink in its last component. It is
// for files outside a store (shutdown's marks); the store writes through Store.root.
func writeFileAtomic(name string, data []byte) error {
	d, err := openNoFollow(filepath.Dir(name), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return storefs.DirOf(d).WriteFileAtomic(filepath.Base(name), data, fileMode)
}
