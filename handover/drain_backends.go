package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/imakexec/imakexec/serialize"
	"golang.org/x/sys/unix"
)

// The four ways a drain empties the kernel's list: staged (A, read, D), delete-n (read, N),
// trim-log (read T, T:N) and snapshot (read only).

// appendDeletion records that the kernel no longer holds this boot's records before
// del.Through (with del.Carried or del.Resolved as the case is); the boot id and method
// are this drain's.
func (d *drainer) appendDeletion(del Deletion) error {
	del.BootID, del.Method = d.ki.BootID, d.res.Backend
	return d.s.appendEntries([]Entry{{Type: EntryDeleted, Deleted: &del}}, nil)
}

// deletedCarried is BootState.DeletedBy's key for records a suspended kernel refused to
// delete (the manifest's "carried" flag; not a backend).
const deletedCarried Backend = "carried"

// listOptions selects what drainList does after reading.
type listOptions struct {
	// Delete writes N (delete-n); without it the list is only read (snapshot).
	Delete bool
}

// suspended records that a delete met ESTALE: measurement is suspended
// (ima_queue_staged_delete_all and ima_queue_delete_partial refuse once
// ima_measurements_suspend ran, from the reboot notifier of any reboot, kexec or not). The
// kernel still holds this boot's records before through, stored and durable; whether the
// next kernel shows them depends on CONFIG_IMA_KEXEC, the syscall and the segment size, and
// rejoin finds out from the next kernel's list. The entry (the manifest's "carried" flag)
// only says the records were not deleted. A repeated refusal adds no entry.
func (d *drainer) suspended(through uint64) error {
	d.res.Suspended = true
	if bs := d.s.Boot(d.ki.BootID); bs != nil && bs.Deleted >= through {
		return nil
	}
	return d.appendDeletion(Deletion{Through: through, Carried: true})
}

// confirm fixes the deletion point of this drain and settles the store on it: resolved
// against the kernel's list (resolve; forced as in resolve), else the one the store has
// confirmed. It is the one step every backend takes before it reads what is held.
func (d *drainer) confirm(v *bootView, open heldReader, resolve bool, forced *uint64) (uint64, error) {
	delPoint := v.deleted
	if resolve {
		var err error
		if delPoint, err = d.resolve(*v, open, forced); err != nil {
			return 0, err
		}
	}
	if err := d.settle(*v, delPoint); err != nil {
		return 0, err
	}
	v.deleted = delPoint
	return delPoint, nil
}

// settle records a deletion point found by resolve when it is past the confirmed one.
func (d *drainer) settle(v bootView, delPoint uint64) error {
	if delPoint <= v.deleted {
		return nil
	}
	d.res.Resolved += delPoint - v.deleted
	return d.appendDeletion(Deletion{Through: delPoint, Resolved: true})
}

// drainList is the delete-n and snapshot backend: read the original SHA1 list, persist,
// and (delete-n) write "N\n" to it, all on one O_RDWR file descriptor.
func (d *drainer) drainList(ctx context.Context, o listOptions) error {
	del := o.Delete
	flag := os.O_RDONLY
	if del {
		flag = os.O_RDWR
	}
	f, err := d.k.openKernel(ctx, d.k.List, flag)
	if err != nil {
		return fmt.Errorf("open measurement list: %w", err)
	}
	defer f.Close()
	open := func() (serialize.Source, error) { return listReader(f) }
	v := d.view()
	// Nothing is deleted by a snapshot: the kernel holds everything after the confirmed
	// deletion point, so only delete-n resolves it against the list.
	delPoint, err := d.confirm(&v, open, del, nil)
	if err != nil {
		return err
	}
	source := SourceSnapshot
	if del {
		source = SourceDeletedN
	}
	pr, err := d.pass(v, delPoint, open, source)
	if err != nil {
		return err
	}
	d.res.Held, d.res.Retained, d.res.Stored = pr.held, pr.retained, pr.stored
	if !del || pr.held == 0 {
		return nil
	}
	if !pr.anyReal {
		// Delete only ranges with a non-violation record: such a record can never appear
		// again in this boot (the hash table keeps its digest; N refuses ima_flush_htable),
		// which is what makes the next run's comparison exact after a crash.
		return nil
	}
	if err := command(f, fmt.Sprintf("%d\n", pr.held)); err != nil {
		if errors.Is(err, unix.ESTALE) {
			return d.suspended(delPoint + pr.held)
		}
		return fmt.Errorf("delete %d records (stored and durable; the next drain retries): %w", pr.held, err)
	}
	if err := d.hook(StepDeleted, pr.held); err != nil {
		return err
	}
	d.res.Deleted += pr.held
	return d.appendDeletion(Deletion{Through: delPoint + pr.held})
}

// drainTrim is the trim-log backend: T from ima_trim_log is the exact deletion point.
func (d *drainer) drainTrim(ctx context.Context) error {
	trimT, err := d.k.readTrimCount(ctx)
	if err != nil {
		return err
	}
	t := trimT
	v := d.view()
	// T counts only what ima_trim_log trimmed; add what other backends deleted this boot.
	if bs := d.s.Boot(d.ki.BootID); bs != nil {
		for m, n := range bs.DeletedBy {
			if m != BackendTrimLog && m != deletedCarried {
				t += n
			}
		}
	}
	delPoint, err := d.confirm(&v, nil, true, &t)
	if err != nil {
		return err
	}
	f, err := d.k.openKernel(ctx, d.k.List, os.O_RDONLY)
	if err != nil {
		return fmt.Errorf("open measurement list: %w", err)
	}
	pr, err := d.pass(v, delPoint, func() (serialize.Source, error) { return listReader(f) }, SourceTrimmed)
	f.Close()
	if err != nil {
		return err
	}
	d.res.Held, d.res.Retained, d.res.Stored = pr.held, pr.retained, pr.stored
	if pr.held == 0 {
		return nil
	}
	tf, err := d.k.openKernel(ctx, d.k.TrimLog, os.O_WRONLY)
	if err != nil {
		return fmt.Errorf("open ima_trim_log: %w", err)
	}
	defer tf.Close()
	if err := command(tf, fmt.Sprintf("%d:%d\n", trimT, pr.held)); err != nil {
		return fmt.Errorf("trim %d records (stored and durable; the next drain retries): %w", pr.held, err)
	}
	if err := d.hook(StepDeleted, pr.held); err != nil {
		return err
	}
	d.res.Deleted += pr.held
	return d.appendDeletion(Deletion{Through: delPoint + pr.held})
}

// drainStaged is the staged backend (7.2): on one O_RDWR fd of the SHA1 staged list, A
// stages the whole current list, the staged records are read and persisted, then D frees
// them. Records left staged by an interrupted run make A fail with EEXIST; they are
// finished first (persist what the store lacks, then D), then a new round starts. Once
// measurement is suspended, A fails with EACCES (only when nothing is staged and the list
// is not empty, ima_queue_stage) and D with ESTALE: what is readable is persisted and
// nothing deleted.
func (d *drainer) drainStaged(ctx context.Context) error {
	f, err := d.k.openKernel(ctx, d.k.Staged, os.O_RDWR)
	if err != nil {
		return fmt.Errorf("open staged list: %w", err)
	}
	defer f.Close()
	open := func() (serialize.Source, error) { return listReader(f) }
	for round := 0; round < 2; round++ {
		err := command(f, "A\n")
		leftover := false
		switch {
		case err == nil:
			if err := d.hook(StepStaged, 0); err != nil {
				return err
			}
		case errors.Is(err, unix.EEXIST):
			leftover = true
		case errors.Is(err, unix.ENOENT):
			// The current list is empty; something may still be staged.
			leftover = true
		case errors.Is(err, unix.EACCES):
			// ima_queue_stage: measurement is suspended, and (EEXIST and ENOENT are
			// checked first) nothing is staged and the current list is not empty. The
			// list stays readable: persist it as a snapshot, delete nothing.
			f.Close()
			d.res.Suspended = true
			return d.drainList(ctx, listOptions{})
		default:
			return fmt.Errorf("stage records: %w", err)
		}
		v := d.view()
		empty := false
		if leftover {
			src, err := open()
			if err != nil {
				return err
			}
			if _, err := src.Next(); errors.Is(err, io.EOF) {
				empty = true
			} else if err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("read staged list: %w", err)
			} else if errors.Is(err, unix.ENOENT) {
				empty = true // RFC v1 returned ENOENT for an empty staged list
			}
		}
		// With nothing staged and the current list empty there is nothing to resolve
		// against: the confirmed deletion point stands.
		resolve, forced := !(leftover && empty), (*uint64)(nil)
		if (!leftover || empty) && v.lastSource == SourceStaged && v.stored > v.deleted {
			// Nothing is staged, so the staged records the store holds were freed by a D
			// whose manifest entry was lost.
			t := v.stored
			resolve, forced = true, &t
		}
		delPoint, err := d.confirm(&v, open, resolve, forced)
		if err != nil {
			return err
		}
		if leftover && empty {
			return nil // nothing staged, nothing to stage
		}
		pr, err := d.pass(v, delPoint, open, SourceStaged)
		if err != nil {
			return err
		}
		d.res.Held += pr.held
		d.res.Retained += pr.retained
		d.res.Stored += pr.stored
		if pr.held > 0 {
			if err := command(f, "D\n"); err != nil {
				if errors.Is(err, unix.ESTALE) {
					return d.suspended(delPoint + pr.held)
				}
				return fmt.Errorf("delete staged records (stored and durable; the next drain finishes): %w", err)
			}
			if err := d.hook(StepDeleted, pr.held); err != nil {
				return err
			}
			d.res.Deleted += pr.held
			if err := d.appendDeletion(Deletion{Through: delPoint + pr.held}); err != nil {
				return err
			}
		}
		if !leftover {
			return nil
		}
	}
	return nil
}
