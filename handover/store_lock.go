package handover

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// The store's lock: flock(2) on DIR/lock, exclusive for writers.

// Lock takes the store's exclusive lock, creating the directory (0700) and lock file
// (0600) when missing, and waits until ctx is done when another process holds it. The
// manifest is read again under the lock.
func (s *Store) Lock(ctx context.Context) error { return s.lock(ctx, true) }

// TryLock is Lock without waiting: it returns ErrLocked when another process holds it.
func (s *Store) TryLock() error { return s.lock(context.Background(), false) }

func (s *Store) lock(ctx context.Context, wait bool) error {
	if s.lockf != nil {
		return errors.New("store already locked by this process")
	}
	if err := checkDir(s.dir, true); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	f, err := openNoFollow(filepath.Join(s.dir, lockName), unix.O_RDWR|unix.O_CREAT, fileMode)
	if err != nil {
		return fmt.Errorf("store: lock: %w", err)
	}
	delay := 10 * time.Millisecond
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("store: lock: %w", err)
		}
		if !wait {
			f.Close()
			return fmt.Errorf("%w (%s)", ErrLocked, s.dir)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return fmt.Errorf("%w (%s): %w", ErrLocked, s.dir, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
	s.lockf = f
	if err := s.load(); err != nil {
		s.Unlock()
		return err
	}
	return nil
}

// Unlock releases the lock.
func (s *Store) Unlock() error {
	if s.lockf == nil {
		return nil
	}
	err := s.lockf.Close() // closing drops the flock
	s.lockf = nil
	return err
}

func (s *Store) mustLock() error {
	if s.lockf == nil {
		return errors.New("store: not locked")
	}
	return nil
}
