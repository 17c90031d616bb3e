package handover

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/serialize"
)

// Backend is a way of reading (and deleting) the kernel's measurement list.
type Backend string

// Backends.
const (
	BackendStaged   Backend = "staged"   // 7.2 CONFIG_IMA_STAGING: A, read, persist, D on *_staged
	BackendDeleteN  Backend = "delete-n" // 7.2: read, persist, N on the original list file
	BackendTrimLog  Backend = "trim-log" // ima_trim_log v5 (unmerged): read T, persist, T:N
	BackendSnapshot Backend = "snapshot" // read-only lists: read and persist, delete nothing
	BackendAuto     Backend = "auto"
	// BackendRejoin marks segments rejoin wrote (carried, reconstructed and duplicate
	// records); it is not a drain backend.
	BackendRejoin Backend = "rejoin"
)

// Kernel errors a caller may branch on; the errno is kept in the chain.
var (
	// ErrBusy: the IMA files stayed held by another writer past the retry bound (7.2 open
	// rules: one writer or many readers, ima_measure_lock).
	ErrBusy = errors.New("IMA measurement files busy")
	// ErrSuspended: measurement is suspended (reboot or kexec under way): A gives EACCES.
	ErrSuspended = errors.New("IMA measurement suspended (reboot or kexec under way)")
	// ErrBackend: the requested backend is not offered by this kernel.
	ErrBackend = errors.New("backend not available")
)

// Kernel is the IMA securityfs interface of the running kernel, probed at run time.
type Kernel struct {
	Dir string // the IMA directory
	// List is the SHA1 binary list (binary_runtime_measurements_sha1, or the legacy name).
	List string
	// Staged is the SHA1 staged list (7.2 `…_sha1_staged`, RFC v1 `…_staged_sha1`, or the
	// `binary_runtime_measurements_staged` symlink); "" without CONFIG_IMA_STAGING.
	Staged string
	// TrimLog is ima_trim_log; "" without the trim-log patch.
	TrimLog string
	// ListWritable: the original list accepts writes (7.2 files are 0660; before, 0440).
	ListWritable bool
	// Banks are the banks with a per-bank binary list (6.10+), in name order.
	Banks []string
	// Busy bounds the EBUSY retries (default 30 s).
	Busy time.Duration
}

// ProbeKernel finds the IMA directory and the interfaces this kernel offers.
func ProbeKernel(p Paths) (*Kernel, error) {
	dir, err := p.IMADir()
	if err != nil {
		return nil, err
	}
	k := &Kernel{Dir: dir, Busy: 30 * time.Second}
	k.List = filepath.Join(dir, "binary_runtime_measurements_sha1")
	if _, err := os.Stat(k.List); err != nil {
		k.List = filepath.Join(dir, "binary_runtime_measurements")
	}
	for _, n := range []string{"binary_runtime_measurements_sha1_staged", "binary_runtime_measurements_staged_sha1", "binary_runtime_measurements_staged"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			k.Staged = filepath.Join(dir, n)
			break
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ima_trim_log")); err == nil {
		k.TrimLog = filepath.Join(dir, "ima_trim_log")
	}
	if fi, err := os.Stat(k.List); err == nil && fi.Mode().Perm()&0o222 != 0 {
		k.ListWritable = true
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		n, ok := strings.CutPrefix(e.Name(), "binary_runtime_measurements_")
		if !ok || strings.Contains(n, "staged") {
			continue
		}
		k.Banks = append(k.Banks, n)
	}
	sort.Strings(k.Banks)
	return k, nil
}

// Backends lists the backends this kernel offers, best first. delete-n is left out when
// the kernel was booted with ima_flush_htable, which makes N fail with EINVAL (_ima_measurements_write).
func (k *Kernel) Backends(ki KernelInfo) []Backend {
	var out []Backend
	if k.Staged != "" {
		out = append(out, BackendStaged)
	}
	if k.ListWritable && ki.FlushHtable() != "on" {
		out = append(out, BackendDeleteN)
	}
	if k.TrimLog != "" {
		out = append(out, BackendTrimLog)
	}
	return append(out, BackendSnapshot)
}

// DeleteNDeclined says why delete-n is not offered although the list file is writable
// (""  when it is offered, or the kernel has no N): a kernel booted with ima_flush_htable
// refuses N with EINVAL ("Deleting staged N measurements not supported when flushing the
// hash table is requested", _ima_measurements_write, 7.2). Under CONFIG_IMA_DISABLE_HTABLE
// the kernel ignores the parameter and would accept N; imakexec cannot see that option
// and stays on the safe side (a snapshot deletes nothing).
func (k *Kernel) DeleteNDeclined(ki KernelInfo) string {
	if k.ListWritable && ki.FlushHtable() == "on" {
		return "ima_flush_htable is set: the kernel refuses N (EINVAL: it does not delete some records while it flushes its hash table), so imakexec does not use delete-n"
	}
	return ""
}

// Choose resolves "auto" (or "") to the best backend and checks that a named one exists.
func (k *Kernel) Choose(name Backend, ki KernelInfo) (Backend, error) {
	avail := k.Backends(ki)
	if name == "" || name == BackendAuto {
		return avail[0], nil
	}
	for _, a := range avail {
		if a == name {
			return name, nil
		}
	}
	switch name {
	case BackendStaged, BackendDeleteN, BackendTrimLog, BackendSnapshot:
	default:
		return "", fmt.Errorf("unknown backend %q (want auto, staged, delete-n, trim-log or snapshot)", name)
	}
	names := make([]string, len(avail))
	for i, a := range avail {
		names[i] = string(a)
	}
	if why := k.DeleteNDeclined(ki); why != "" && name == BackendDeleteN {
		return "", fmt.Errorf("%w: %s: %s (this kernel offers %s)", ErrBackend, name, why, strings.Join(names, ", "))
	}
	return "", fmt.Errorf("%w: %s (this kernel offers %s)", ErrBackend, name, strings.Join(names, ", "))
}

// Count reads runtime_measurements_count (-1 when unreadable).
func (k *Kernel) Count() int64 {
	b, err := os.ReadFile(filepath.Join(k.Dir, "runtime_measurements_count"))
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// retryBusy runs op until it does not fail with EBUSY, backing off up to k.Busy.
func (k *Kernel) retryBusy(ctx context.Context, what string, op func() error) error {
	bound := k.Busy
	if bound <= 0 {
		bound = 30 * time.Second
	}
	deadline := time.Now().Add(bound)
	delay := 5 * time.Millisecond
	for {
		err := op()
		if err == nil || !errors.Is(err, unix.EBUSY) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s: another process kept the IMA files open for %v (7.2 allows one writer or many readers)%s: %w", ErrBusy, what, bound, busyHint(k.Dir), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// openKernel opens a kernel file, retrying EBUSY.
func (k *Kernel) openKernel(ctx context.Context, name string, flag int) (*os.File, error) {
	var f *os.File
	err := k.retryBusy(ctx, "open "+filepath.Base(name), func() error {
		var err error
		f, err = os.OpenFile(name, flag, 0)
		return err
	})
	return f, err
}

// command writes one request ("A\n", "D\n", "N\n", "T:N\n") to an open kernel file. The
// kernel parses the whole write at once and ignores the offset (_ima_measurements_write).
func command(f *os.File, cmd string) error {
	n, err := f.Write([]byte(cmd))
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(cmd), filepath.Base(f.Name()), err)
	}
	if n != len(cmd) {
		return fmt.Errorf("write %q to %s: short write", strings.TrimSpace(cmd), filepath.Base(f.Name()))
	}
	return nil
}

// listReader reads SHA1 binary list records from an open kernel file, from offset 0.
func listReader(f *os.File) (*serialize.BinaryReader, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seek %s: %w", filepath.Base(f.Name()), err)
	}
	return serialize.NewBinaryReader(bufio.NewReaderSize(f, 1<<20), storeOrder, serialize.SHA1Size), nil
}

// readTrimCount reads T from ima_trim_log: the records trimmed since boot (v5).
func (k *Kernel) readTrimCount(ctx context.Context) (uint64, error) {
	f, err := k.openKernel(ctx, k.TrimLog, os.O_RDONLY)
	if err != nil {
		return 0, fmt.Errorf("read ima_trim_log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, fmt.Errorf("read ima_trim_log: %w", err)
	}
	t, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || t < 0 {
		return 0, fmt.Errorf("read ima_trim_log: %q is not a count", strings.TrimSpace(string(b)))
	}
	return uint64(t), nil
}

// backendNote explains a backend chosen below delete-n because the kernel refuses N.
func backendNote(k *Kernel, ki KernelInfo, chosen Backend) string {
	why := k.DeleteNDeclined(ki)
	if why == "" || chosen == BackendStaged {
		return ""
	}
	if chosen == BackendSnapshot {
		return why + ": snapshot (nothing is deleted; the kernel keeps its whole list)"
	}
	return why + ": " + string(chosen)
}
