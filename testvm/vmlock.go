package testvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// EnvVMLock names the lock file that serialises VMs on this machine
// (default: imakexec-vm.lock in the temporary directory).
const EnvVMLock = "IMAKEXEC_VM_LOCK"

// lockVM takes the machine-wide VM lock: one QEMU at a time, whichever test
// binary, package or clone starts it. Under TCG two guests on two cores slow
// each other past their timeouts, and `go test ./...` runs packages in
// parallel. The wait is not counted in the VM's own timeout.
func lockVM(ctx context.Context) (func(), error) {
	name := os.Getenv(EnvVMLock)
	if name == "" {
		name = filepath.Join(os.TempDir(), "imakexec-vm.lock")
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o666)
	if err != nil {
		return nil, fmt.Errorf("vm lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("vm lock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("vm lock %s: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
