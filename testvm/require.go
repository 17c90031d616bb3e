package testvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/testvm/frame"
)

// EnvConsole, when set, streams every VM console line to t.Logf as it
// arrives (otherwise the console is logged only when a test fails).
const EnvConsole = "IMAKEXEC_VM_CONSOLE"

// InCI is testenv.InCI, the one rule for "are we in CI": there a missing VM
// prerequisite is a failure, never a skip.
func InCI() bool { return testenv.InCI() }

// skipOrFail skips the test with reason, or fails it in CI.
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("VM test prerequisite missing in CI ($CI is set, so this is not skipped): %s", reason)
	}
	t.Skip(reason)
}

// requireLong skips VM tests under -short, except in CI.
func requireLong(t testing.TB) {
	t.Helper()
	if testing.Short() && !InCI() {
		t.Skip("VM test: skipped in -short mode")
	}
}

// checkTools returns why the host cannot run VMs, or "".
func checkTools() string {
	var missing []string
	for _, tool := range []struct{ bin, pkg string }{
		{QEMUBinary(), "qemu-system-x86"},
		{"swtpm", "swtpm"},
		{"swtpm_setup", "swtpm-tools"},
		{"go", "the Go toolchain, to build guest programs"},
	} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", tool.bin, tool.pkg))
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return "not in $PATH: " + strings.Join(missing, ", ")
}

// Require checks what a VM test needs (QEMU, swtpm, swtpm_setup, go and the
// Debian test kernel, see FindKernel) and returns the kernel path. If
// something is missing it skips the test with the precise reason, or fails it
// when $CI is set. Under -short it skips (not in CI).
func Require(t testing.TB) string {
	t.Helper()
	requireLong(t)
	if why := checkTools(); why != "" {
		skipOrFail(t, why)
	}
	k, err := FindKernel()
	if err != nil {
		skipOrFail(t, err.Error())
	}
	return k
}

// RequireIMAKexecKernel is Require for tests that need a CONFIG_IMA_KEXEC=y
// kernel (see FindIMAKexecKernel).
func RequireIMAKexecKernel(t testing.TB) string {
	t.Helper()
	return requireKernel(t, FindIMAKexecKernel)
}

// RequireIMAStagingKernel is Require for tests that need the 7.2 kernel with
// CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y (see FindIMAStagingKernel).
func RequireIMAStagingKernel(t testing.TB) string {
	t.Helper()
	return requireKernel(t, FindIMAStagingKernel)
}

// RequireDebian72Kernel is Require for tests that need Debian's own 7.2 kernel (see
// FindDebian72Kernel).
func RequireDebian72Kernel(t testing.TB) string {
	t.Helper()
	return requireKernel(t, FindDebian72Kernel)
}

func requireKernel(t testing.TB, find func() (string, error)) string {
	t.Helper()
	requireLong(t)
	if why := checkTools(); why != "" {
		skipOrFail(t, why)
	}
	k, err := find()
	if err != nil {
		skipOrFail(t, err.Error())
	}
	return k
}

// Boot runs m for a test and returns its result. Dir defaults to
// t.TempDir(). The test fails (t.Fatal) if QEMU fails or times out, if the
// data port is garbled, if the guest sent an "error" mark, or if it did not
// send the poweroff mark (guestlib.Guest.Poweroff), for example because the
// kernel panicked. On any failure of the test, now or later, the QEMU
// command line and the console are logged.
func Boot(t testing.TB, m Machine) *Result {
	t.Helper()
	if m.Dir == "" {
		m.Dir = t.TempDir()
	}
	if m.ConsoleLine == nil && os.Getenv(EnvConsole) != "" {
		m.ConsoleLine = func(line string) { t.Logf("console: %s", line) }
	}
	res, err := m.Run(context.Background())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("qemu command line:\n%s", res.CommandLine())
			t.Logf("console:\n%s", res.Console)
			t.Logf("marks: %q", res.Stream.Marks())
		}
	})
	switch {
	case err != nil:
		t.Fatalf("boot (%v): %v", res.Elapsed.Round(time.Millisecond), err)
	case res.Stream.GuestError() != nil:
		t.Fatal(res.Stream.GuestError())
	case !res.Stream.HasMark(frame.MarkPoweroff):
		t.Fatal(errors.New("guest did not power off (kernel panic, crash or kexec failure?); see console"))
	}
	t.Logf("vm ran %v", res.Elapsed.Round(time.Millisecond))
	return res
}
