package handover

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/imakexec/imakexec/internal/storefs"
	"golang.org/x/sys/unix"
)

// The store's lock: flock(2) on DIR/lock, exclusive for writers (drain, rejoin, archive),
// shared for readers (export, OpenChain, status, verify), so a reader never sees a store
// half way through a drain.

// DefaultLockWait bounds how long Lock and RLock wait for another process (the context
// may end the wait sooner).
const DefaultLockWait = 2 * time.Minute

// Lock takes the store's exclusive lock, creating the directory (0700, with its parents)
// and lock file (0600) when missing, and waits until ctx is done or DefaultLockWait has
// passed when another process holds it. The manifest is read again under the lock.
func (s *Store) Lock(ctx context.Context) error { return s.lock(ctx, unix.LOCK_EX, true) }

// TryLock is Lock without waiting: it returns ErrLocked when another process holds it.
func (s *Store) TryLock() error { return s.lock(context.Background(), unix.LOCK_EX, false) }

// RLock takes the store's shared lock, as readers do: drains wait for it and it waits for
// drains (as Lock does). It creates nothing and works on a read-only store; a store
// without a directory or lock file has never been written and is read without one. The
// manifest is read again under the lock. Unlock releases it.
func (s *Store) RLock(ctx context.Context) error { return s.lock(ctx, unix.LOCK_SH, true) }

func (s *Store) lock(ctx context.Context, how int, wait bool) error {
	if s.lockf != nil || s.rlocked {
		return errors.New("store already locked by this process")
	}
	var f *os.File
	var err error
	var root *storefs.Dir
	if how == unix.LOCK_EX {
		if err := checkDir(s.dir, true); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		if root, err = storefs.OpenDir(s.dir); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		defer func() {
			if root != nil {
				root.Close()
			}
		}()
		f, err = root.Open(lockName, unix.O_RDWR|unix.O_CREAT|unix.O_NONBLOCK, fileMode)
	} else {
		f, err = openStoreFileFlag(s.dir, lockName, unix.O_RDONLY|unix.O_NONBLOCK, 0)
		if errors.Is(err, os.ErrNotExist) {
			// No store, or one never locked (nothing can be writing it): read it as is.
			s.rlocked, s.ctx = true, ctx
			if err := s.load(); err != nil {
				s.rlocked = false
				return err
			}
			return nil
		}
	}
	if err == nil {
		if err = checkOwned(f, f.Name(), false); err != nil {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("store: lock: %w", err)
	}
	deadline := time.Now().Add(DefaultLockWait)
	delay := 10 * time.Millisecond
	for {
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("store: lock: %w", err)
		}
		if !wait {
			who := lockHolders(f)
			f.Close()
			return fmt.Errorf("%w (%s%s)", ErrLocked, s.dir, who)
		}
		if time.Now().After(deadline) {
			who := lockHolders(f)
			f.Close()
			return fmt.Errorf("%w (%s%s): waited %v", ErrLocked, s.dir, who, DefaultLockWait)
		}
		select {
		case <-ctx.Done():
			who := lockHolders(f)
			f.Close()
			return fmt.Errorf("%w (%s%s): %w", ErrLocked, s.dir, who, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
	s.ctx = ctx
	if how == unix.LOCK_SH {
		s.lockf, s.rlocked = f, true
	} else {
		s.lockf, s.root = f, root
		root = nil
	}
	if err := s.load(); err != nil {
		s.Unlock()
		return err
	}
	return nil
}

// Unlock releases the lock (exclusive or shared).
func (s *Store) Unlock() error {
	s.rlocked = false
	if s.root != nil {
		s.root.Close()
		s.root = nil
	}
	if s.lockf == nil {
		return nil
	}
	err := s.lockf.Close() // closing drops the flock
	s.lockf = nil
	return err
}

// mustLock checks the store is locked for writing.
func (s *Store) mustLock() error {
	if s.lockf == nil || s.rlocked || s.root == nil {
		return errors.New("store: not locked for writing")
	}
	return nil
}

// lockHolders names the processes holding a flock on the lock file f, from /proc/locks
// (", held by pid 123 (imakexec drain)"), or "" when they cannot be found.
func lockHolders(f *os.File) string {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return ""
	}
	pids := flockHolders("/proc", st.Dev, st.Ino)
	if len(pids) == 0 {
		return ""
	}
	var names []string
	for _, p := range pids {
		names = append(names, describePid("/proc", p))
	}
	return ", held by " + strings.Join(names, ", ")
}

// flockHolders parses proc/locks for FLOCK locks on the inode dev:ino, e.g.
// "1: FLOCK  ADVISORY  WRITE 1234 08:01:123456 0 EOF" (fs/locks.c lock_get_status).
func flockHolders(proc string, dev uint64, ino uint64) []int {
	f, err := os.Open(filepath.Join(proc, "locks"))
	if err != nil {
		return nil
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(dev), unix.Minor(dev), ino)
	var out []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// "N:" may be followed by "->" for a blocked waiter.
		if len(fs) < 6 || fs[1] == "->" || fs[1] != "FLOCK" {
			continue
		}
		if fs[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fs[4]); err == nil && pid > 0 && !slices.Contains(out, pid) {
			out = append(out, pid)
		}
	}
	return out
}

// describePid is "pid N (cmdline)", the command line cut to 80 bytes.
func describePid(proc string, pid int) string {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		return fmt.Sprintf("pid %d", pid)
	}
	cl := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(cl) > 80 {
		cl = cl[:80] + "…"
	}
	return fmt.Sprintf("pid %d (%s)", pid, cl)
}
