//go:build linux

// Package guestlib is the guest half of testvm: the code a test program needs
// when it runs as /init of a throwaway VM.
//
// [Start] mounts the pseudo filesystems (the Debian kernels do not
// auto-mount devtmpfs), gives the process a console on fds 0-2 if the kernel
// started it without one, opens the data port (ttyS1) and parses the kernel
// command line. Results go back to the host as frames (package
// testvm/frame) on the data port; [Guest.Poweroff] drains the port and
// powers the machine off, which makes QEMU exit.
package guestlib

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/internal/kcmdline"
	"github.com/imakexec/imakexec/testvm/frame"
)

// DataPort is the serial port the host reads frames from (QEMU's second
// -serial).
const DataPort = "/dev/ttyS1"

// Mount is one filesystem [Start] mounts.
type Mount struct {
	Source, Target, FSType string
}

// DefaultMounts are the filesystems a test /init needs. securityfs gives the
// IMA files; tmpfs on /tmp gives a writable scratch area distinct from the
// rootfs.
var DefaultMounts = []Mount{
	{"proc", "/proc", "proc"},
	{"sysfs", "/sys", "sysfs"},
	{"devtmpfs", "/dev", "devtmpfs"},
	{"securityfs", "/sys/kernel/security", "securityfs"},
	{"tmpfs", "/tmp", "tmpfs"},
}

// Guest is the running test program's view of its VM.
type Guest struct {
	// Cmdline is /proc/cmdline without the trailing newline.
	Cmdline string
	// Args holds the key=value words of Cmdline (a bare word maps to "").
	// Later words win.
	Args map[string]string

	port *os.File // nil: frames go to the console only
	enc  *frame.Encoder
	t0   time.Time
}

// Start prepares the guest: mounts, console, data port, command line.
// Mount failures are reported on the console and as marks but are not
// fatal; a missing securityfs shows up later as a clear read error instead.
func Start() *Guest {
	g := &Guest{t0: time.Now(), Args: map[string]string{}}
	var mountErrs []error
	for _, m := range DefaultMounts {
		if err := MountFS(m); err != nil {
			mountErrs = append(mountErrs, err)
		}
	}
	ensureConsole()
	if f, err := os.OpenFile(DataPort, os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		g.port = f
		g.enc = frame.NewEncoder(f)
	} else {
		g.Logf("no data port, frames go to the console: %v", err)
		g.enc = frame.NewEncoder(os.Stdout)
	}
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		g.Cmdline = strings.TrimSpace(string(b))
		g.Args = ParseCmdline(g.Cmdline)
	}
	for _, err := range mountErrs {
		g.Mark("mount-error %v", err)
	}
	return g
}

// MountFS mounts m, creating the target. An already mounted target (EBUSY)
// is not an error.
func MountFS(m Mount) error {
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("mount %s: %w", m.Target, err)
	}
	if err := unix.Mount(m.Source, m.Target, m.FSType, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
	}
	return nil
}

// ensureConsole gives fds 0-2 a console if the kernel started /init without
// one, which it does when the initramfs has no dev/console.
func ensureConsole() {
	if _, err := unix.FcntlInt(1, unix.F_GETFD, 0); err == nil {
		return
	}
	f, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
	if err != nil {
		return
	}
	for fd := 0; fd < 3; fd++ {
		_ = unix.Dup2(int(f.Fd()), fd)
	}
}

// ParseCmdline splits a kernel command line into key=value words with the kernel's rules
// (internal/kcmdline, next_arg); a repeated key keeps its last value.
func ParseCmdline(s string) map[string]string {
	m := map[string]string{}
	for _, a := range kcmdline.Parse(s) {
		m[a.Key] = a.Value
	}
	return m
}

// Arg returns the command line value of key, or def if it is absent.
func (g *Guest) Arg(key, def string) string {
	if v, ok := g.Args[key]; ok {
		return v
	}
	return def
}

// IntArg is Arg for integers; a malformed value is fatal.
func (g *Guest) IntArg(key string, def int) int {
	v, ok := g.Args[key]
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		g.Fatalf("command line %s=%q: %v", key, v, err)
	}
	return n
}

// Logf writes a line to the console, prefixed with the guest uptime.
func (g *Guest) Logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "guest[%6.2fs]: %s\n", Uptime(), fmt.Sprintf(format, args...))
}

// Mark sends a text mark to the host and echoes it on the console.
func (g *Guest) Mark(format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	g.Logf("mark: %s", text)
	if err := g.enc.Mark(text); err != nil {
		g.Logf("write mark: %v", err)
	}
}

// Blob sends a named blob to the host.
func (g *Guest) Blob(name string, data []byte) error {
	if err := g.enc.Blob(name, data); err != nil {
		return fmt.Errorf("send blob %s: %w", name, err)
	}
	g.Logf("sent blob %s (%d bytes)", name, len(data))
	return nil
}

// Fatalf reports an error mark and powers off.
func (g *Guest) Fatalf(format string, args ...any) {
	g.Mark("%s %s", frame.MarkError, fmt.Sprintf(format, args...))
	g.Poweroff()
}

// Drain waits until everything written to the data port has left the UART,
// so a following reboot or kexec cannot cut it off.
func (g *Guest) Drain() {
	if g.port != nil {
		_ = unix.IoctlSetInt(int(g.port.Fd()), unix.TCSBRK, 1) // tcdrain
	}
}

// Poweroff sends the poweroff mark, drains the data port, syncs and powers
// the machine off. It does not return.
func (g *Guest) Poweroff() {
	g.Mark("%s", frame.MarkPoweroff)
	g.Drain()
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		g.Logf("poweroff: %v", err)
	}
	// PID 1 must not exit (that panics the kernel); wait for the power to go.
	select {}
}

// Uptime returns the guest's /proc/uptime, or -1.
func Uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return -1
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, err := strconv.ParseFloat(f, 64)
	if err != nil {
		return -1
	}
	return v
}
