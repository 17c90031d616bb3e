package testvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// TPM is a running swtpm TPM 2.0 for one VM.
//
// Each VM gets a fresh one: PCRs survive a kexec (the TPM is not reset), so
// sharing a TPM between VMs would mix their measurements.
type TPM struct {
	// StateDir holds the TPM state (swtpm_setup output).
	StateDir string
	// Socket is the control socket QEMU's tpm emulator backend connects to.
	Socket string

	cmd     *exec.Cmd
	sockDir string
	done    chan error
}

// StartTPM creates TPM state in stateDir with the sha1 and sha256 PCR banks
// allocated (swtpm_setup) and starts "swtpm socket" on a control socket. If
// stateDir already holds swtpm state (tpm2-00.permall), that TPM is started
// again as it is: a power cycle of the same TPM.
// swtpm exits when QEMU disconnects (--terminate); Close stops it in any
// case. Logs go to stateDir/swtpm_setup.log and stateDir/swtpm.log.
func StartTPM(ctx context.Context, stateDir string) (*TPM, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("start tpm: %w", err)
	}
	setupLog := filepath.Join(stateDir, "swtpm_setup.log")
	if !fileExists(filepath.Join(stateDir, "tpm2-00.permall")) {
		setup := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", stateDir,
			"--pcr-banks", "sha1,sha256", "--overwrite", "--logfile", setupLog)
		if out, err := setup.CombinedOutput(); err != nil {
			log, _ := os.ReadFile(setupLog)
			return nil, fmt.Errorf("start tpm: swtpm_setup: %w: %s%s", err, out, log)
		}
	}
	// A unix socket path must fit in 108 bytes; t.TempDir() paths can be
	// longer, so the socket gets a short directory of its own.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		return nil, fmt.Errorf("start tpm: %w", err)
	}
	t := &TPM{StateDir: stateDir, Socket: filepath.Join(sockDir, "ctrl"), sockDir: sockDir, done: make(chan error, 1)}
	t.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--ctrl", "type=unixio,path="+t.Socket,
		"--log", "file="+filepath.Join(stateDir, "swtpm.log")+",level=1",
		"--terminate")
	if err := t.cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("start tpm: swtpm: %w", err)
	}
	go func() { t.done <- t.cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(t.Socket); err == nil {
			return t, nil
		}
		select {
		case err := <-t.done:
			t.done <- err
			t.Close()
			return nil, fmt.Errorf("start tpm: swtpm exited before creating its socket: %v", err)
		case <-ctx.Done():
			t.Close()
			return nil, fmt.Errorf("start tpm: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Close()
			return nil, errors.New("start tpm: swtpm did not create its socket within 10s")
		}
	}
}

// QEMUArgs returns the QEMU arguments that attach the TPM as a TIS device.
func (t *TPM) QEMUArgs() []string {
	return []string{
		"-chardev", "socket,id=chrtpm,path=" + t.Socket,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0",
	}
}

// Close stops swtpm (if it has not exited with QEMU) and removes the socket
// directory. The state directory is left to its owner.
func (t *TPM) Close() error {
	var err error
	select {
	case err = <-t.done:
	case <-time.After(2 * time.Second):
		_ = t.cmd.Process.Kill()
		err = <-t.done
	}
	t.done <- err // keep Close idempotent
	os.RemoveAll(t.sockDir)
	return nil
}
