package testvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imakexec/imakexec/testvm/frame"
)

// Environment variables that override Machine defaults.
const (
	// EnvQEMU names the QEMU binary (default qemu-system-x86_64).
	EnvQEMU = "IMAKEXEC_QEMU"
	// EnvVMTimeout is the per-VM timeout as a Go duration (default 5m).
	EnvVMTimeout = "IMAKEXEC_VM_TIMEOUT"
)

// DefaultTimeout bounds one VM run when neither Machine.Timeout nor
// $IMAKEXEC_VM_TIMEOUT is set. A TCG boot takes about 5 s and a kexec round
// trip about 22 s on the Debian kernel.
const DefaultTimeout = 5 * time.Minute

// ErrTimeout is returned (wrapped) when a VM outlives its timeout.
var ErrTimeout = errors.New("vm timed out")

// Machine describes one VM run: QEMU TCG (KVM is not assumed), one vCPU,
// ttyS0 as the console, ttyS1 as the data port, and a fresh swtpm.
type Machine struct {
	// Kernel and Initramfs are host paths given to -kernel and -initrd.
	Kernel    string
	Initramfs string
	// Append is added to the kernel command line after
	// "console=ttyS0 panic=-1" (a panic then ends QEMU because of -no-reboot).
	Append string
	// Dir receives console.log, data.log and the TPM state. Required.
	Dir string
	// MemoryMiB defaults to 1024.
	MemoryMiB int
	// Timeout defaults to $IMAKEXEC_VM_TIMEOUT, then DefaultTimeout.
	Timeout time.Duration
	// NoTPM leaves out the swtpm TPM.
	NoTPM bool
	// TPMStateDir keeps the TPM state outside Dir. If it already holds swtpm
	// state (an earlier VM's), that TPM is started again without swtpm_setup:
	// the next VM is a cold boot of the same machine (resetCount goes up), not
	// a new TPM. Default: Dir/tpm, always fresh.
	TPMStateDir string
	// ExtraArgs are appended to the QEMU command line.
	ExtraArgs []string
	// ConsoleLine, if set, is called with every console line as it arrives
	// (for example t.Logf in a verbose test).
	ConsoleLine func(line string)
}

// Result is what a finished VM left behind.
type Result struct {
	// Args is the QEMU command line (Args[0] is the binary).
	Args []string
	// Console is everything written to ttyS0.
	Console []byte
	// Data is the raw ttyS1 stream, and Stream its decoded frames.
	Data   []byte
	Stream *frame.Stream
	// Elapsed is the QEMU wall time.
	Elapsed time.Duration
	// Lines are the console lines with the time each arrived on the host, counted
	// from QEMU's start (for phase timings across a kexec, where the guest clock
	// restarts).
	Lines []ConsoleLine
}

// ConsoleLine is one console line and when the host received it.
type ConsoleLine struct {
	At   time.Duration
	Text string
}

// FirstLine returns the first console line at or after index from that contains
// substr, and its index; -1 if there is none.
func (r *Result) FirstLine(from int, substr string) (ConsoleLine, int) {
	for i := max(from, 0); i < len(r.Lines); i++ {
		if strings.Contains(r.Lines[i].Text, substr) {
			return r.Lines[i], i
		}
	}
	return ConsoleLine{}, -1
}

// CommandLine returns Args quoted for a shell, for reproducing a run.
func (r *Result) CommandLine() string {
	q := make([]string, len(r.Args))
	for i, a := range r.Args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// QEMUBinary returns $IMAKEXEC_QEMU or "qemu-system-x86_64".
func QEMUBinary() string {
	if q := os.Getenv(EnvQEMU); q != "" {
		return q
	}
	return "qemu-system-x86_64"
}

func (m *Machine) timeout() (time.Duration, error) {
	if m.Timeout > 0 {
		return m.Timeout, nil
	}
	if s := os.Getenv(EnvVMTimeout); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return 0, fmt.Errorf("$%s=%q: want a positive Go duration", EnvVMTimeout, s)
		}
		return d, nil
	}
	return DefaultTimeout, nil
}

// args builds the QEMU command line. The console is QEMU's stdio (read
// through a pipe), the data port a file: a file is complete when QEMU exits,
// and nothing else writes to ttyS1.
func (m *Machine) args(dataLog string, tpm *TPM) []string {
	mem := m.MemoryMiB
	if mem == 0 {
		mem = 1024
	}
	a := []string{QEMUBinary(),
		"-machine", "pc", "-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(mem), "-smp", "1",
		"-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
		"-serial", "stdio", "-serial", "file:" + dataLog,
	}
	if tpm != nil {
		a = append(a, tpm.QEMUArgs()...)
	}
	a = append(a, "-kernel", m.Kernel)
	if m.Initramfs != "" {
		a = append(a, "-initrd", m.Initramfs)
	}
	a = append(a, "-append", strings.TrimSpace("console=ttyS0 panic=-1 "+m.Append))
	return append(a, m.ExtraArgs...)
}

// Run boots the machine and waits for QEMU to exit (the guest powers off,
// panics or reboots; all three end QEMU). It returns the Result even with an
// error, as far as it got, so callers can log the console.
//
// A nil error only means QEMU ran and exited 0; whether the guest did what it
// should is for the caller to judge from Result.Stream (for example
// Stream.GuestError and the frame.MarkPoweroff mark). A frame decoding error
// is returned wrapped, after the QEMU error if there is one.
func (m *Machine) Run(ctx context.Context) (*Result, error) {
	res := &Result{Stream: &frame.Stream{}}
	if m.Dir == "" || m.Kernel == "" {
		return res, errors.New("run vm: Machine.Dir and Machine.Kernel are required")
	}
	timeout, err := m.timeout()
	if err != nil {
		return res, fmt.Errorf("run vm: %w", err)
	}
	unlock, err := lockVM(ctx)
	if err != nil {
		return res, fmt.Errorf("run vm: %w", err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return res, fmt.Errorf("run vm: %w", err)
	}

	var tpm *TPM
	if !m.NoTPM {
		stateDir := m.TPMStateDir
		if stateDir == "" {
			stateDir = filepath.Join(m.Dir, "tpm")
		}
		if tpm, err = StartTPM(ctx, stateDir); err != nil {
			return res, fmt.Errorf("run vm: %w", err)
		}
		defer tpm.Close()
	}
	dataLog := filepath.Join(m.Dir, "data.log")
	consoleLog := filepath.Join(m.Dir, "console.log")
	res.Args = m.args(dataLog, tpm)

	cf, err := os.Create(consoleLog)
	if err != nil {
		return res, fmt.Errorf("run vm: %w", err)
	}
	defer cf.Close()
	var console bytes.Buffer
	start := time.Now()
	lw := &lineWriter{fn: m.ConsoleLine, start: start}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, res.Args[0], res.Args[1:]...)
	cmd.Stdin = nil // /dev/null: the guest gets no console input
	cmd.Stdout = io.MultiWriter(cf, &console, lw)
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second

	runErr := cmd.Run()
	res.Elapsed = time.Since(start)
	lw.flush()
	res.Lines = lw.lines
	res.Console = console.Bytes()
	if stderr.Len() > 0 {
		res.Console = append(res.Console, "\n--- qemu stderr ---\n"...)
		res.Console = append(res.Console, stderr.Bytes()...)
	}
	if ctx.Err() == context.DeadlineExceeded {
		runErr = fmt.Errorf("%w after %v", ErrTimeout, timeout)
	} else if runErr != nil {
		runErr = fmt.Errorf("qemu: %w: %s", runErr, strings.TrimSpace(stderr.String()))
	}

	res.Data, err = os.ReadFile(dataLog)
	if err != nil && runErr == nil {
		runErr = fmt.Errorf("read data port: %w", err)
	}
	stream, decErr := frame.Decode(bytes.NewReader(res.Data))
	res.Stream = stream
	if runErr != nil {
		return res, fmt.Errorf("run vm: %w", runErr)
	}
	if decErr != nil {
		return res, fmt.Errorf("run vm: decode data port: %w", decErr)
	}
	return res, nil
}

// lineWriter calls fn for every complete line written to it.
type lineWriter struct {
	mu    sync.Mutex
	fn    func(string)
	buf   []byte
	start time.Time
	lines []ConsoleLine
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.line(strings.TrimRight(string(w.buf[:i]), "\r"))
		w.buf = w.buf[i+1:]
	}
}

func (w *lineWriter) line(text string) {
	w.lines = append(w.lines, ConsoleLine{At: time.Since(w.start), Text: text})
	if w.fn != nil {
		w.fn(text)
	}
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(strings.TrimRight(string(w.buf), "\r"))
		w.buf = nil
	}
}
