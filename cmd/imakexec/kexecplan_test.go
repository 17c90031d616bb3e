package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// TestKexecPlanFromLog runs `imakexec kexec --dry-run` on the kernel model booted with a
// template and ima_hash that are not the defaults and appear nowhere on its command line
// (CONFIG_IMA_DEFAULT_TEMPLATE / CONFIG_IMA_DEFAULT_HASH): the plan must name them, read
// from the kernel's own records. Then the real flow loads and jumps (in the model), and
// rejoin proves the kexec window with them. The same rejoin with what the plan guessed
// before (ima-ng/ima-sig, sha256) must fail: the window records are only provable with
// the kernel's real template and hash.
func TestKexecPlanFromLog(t *testing.T) {
	for _, c := range []struct {
		profile  kmodel.Profile
		template string
		hash     string
		rebuilt  uint64 // window records rejoin must rebuild (0: the kernel carried them)
	}{
		{kmodel.ProfileDebian61, "d-ngv2|n-ng", "sha512", 3},
		{kmodel.ProfileDebian61, "ima-ngv2", "sha1", 3},
		{kmodel.ProfileDebian61, "ima-ng", "sha512", 3},
		{kmodel.Profile61IMAKexec, "d-ngv2|n-ng", "sha512", 0},
		{kmodel.Profile616, "d-ngv2|n-ng", "sha512", 0},
		{kmodel.Profile72, "d-ngv2|n-ng", "sha512", 0},
		{kmodel.Profile72, "ima-ngv2", "sha1", 0},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s", c.profile, strings.ReplaceAll(c.template, "|", "+"), c.hash), func(t *testing.T) {
			env := kmodeltest.Mount(t, kmodel.Config{Profile: c.profile, Template: c.template, Hash: c.hash})
			paths := handover.Paths{Securityfs: env.Securityfs, Proc: env.Proc}
			// The defaults are built in: neither shows on the command line.
			if err := os.WriteFile(filepath.Join(env.Proc, "cmdline"), []byte("console=ttyS0\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			store := filepath.Join(t.TempDir(), "store")
			for i := 0; i < 10; i++ {
				env.Kernel.Exec(fmt.Sprintf("/usr/bin/t%d", i), []byte{byte(i)})
			}
			if r, err := handover.Rejoin(context.Background(), handover.RejoinOptions{Paths: paths, StoreDir: store, TPM: env.TPM}); err != nil || !r.NewChain {
				t.Fatalf("first rejoin: %+v %v", r, err)
			}
			for i := 0; i < 5; i++ {
				env.Kernel.Read(fmt.Sprintf("/etc/c%d", i), []byte{byte(i)})
			}
			kernel := filepath.Join(t.TempDir(), "vmlinuz")
			if err := os.WriteFile(kernel, bytes.Repeat([]byte("K"), 4096), 0o600); err != nil {
				t.Fatal(err)
			}
			global := []string{"--securityfs", env.Securityfs, "--tpm", "unix:" + env.TPMSocket}
			args := append(global, "kexec", "--proc", env.Proc, "--store", store, "--kernel", kernel, "--append", "console=ttyS0", "--dry-run")
			code, out, stderr := runCLI(t, "", append(args, "--json")...)
			if code != 0 {
				t.Fatalf("kexec --dry-run: exit %d: %s %s", code, out, stderr)
			}
			var rep initramfs.KexecReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatal(err)
			}
			ok := rep.OldKernel
			if ok.IMAHash != c.hash || ok.IMAHashSource != "log" || !slices.Contains(ok.Templates, c.template) {
				t.Errorf("plan: ima_hash %s from %s (%s), templates %q; want %s from the log and %q", ok.IMAHash, ok.IMAHashSource, ok.IMAHashFrom, ok.Templates, c.hash, c.template)
			}
			for _, w := range rep.Warnings {
				if strings.Contains(w, "unknown") || strings.Contains(w, "assuming") {
					t.Errorf("plan warns %q", w)
				}
			}
			if got := rep.Kernel.Digests[c.hash]; got == "" {
				t.Errorf("kernel not hashed in %s: %v", c.hash, rep.Kernel.Digests)
			}
			if _, text, _ := runCLI(t, "", args...); !strings.Contains(text, "ima_hash "+c.hash) || !strings.Contains(text, c.template) {
				t.Errorf("plan text does not name %s and %q:\n%s", c.hash, c.template, text)
			}

			// The real flow: drain, handoff, load and jump in the model.
			steps := handover.NewKexecSteps(paths, store, "unix:"+env.TPMSocket)
			defer steps.Close()
			var tr []string
			kx := &modelKexec{k: env.Kernel, tr: &tr}
			if _, err := initramfs.RunKexec(context.Background(), initramfs.KexecOptions{Kernel: kernel, Cmdline: "console=ttyS0", Store: store, Proc: env.Proc}, steps, kx); err != nil {
				t.Fatal(err)
			}
			ih, err := initramfs.ReadImageHandoff(bytes.NewReader(kx.initrd), int64(len(kx.initrd)), initramfs.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			window := handover.WindowFromHandoff(ih.Handoff, handover.ReadProcCmdline(paths))
			if c.rebuilt > 0 {
				guess := *window
				guess.IMAHash, guess.Templates = "sha256", nil
				var je *handover.JoinError
				if _, err := handover.Rejoin(context.Background(), handover.RejoinOptions{Paths: paths, StoreDir: store, TPM: env.TPM, Window: &guess}); !errors.As(err, &je) {
					t.Fatalf("rejoin with the guessed templates and sha256: want a JoinError, got %v", err)
				}
			}
			r, err := handover.Rejoin(context.Background(), handover.RejoinOptions{Paths: paths, StoreDir: store, TPM: env.TPM, Window: window})
			if err != nil {
				t.Fatalf("rejoin: %v", err)
			}
			if r.Verify == nil || r.Join == nil || r.Join.Reconstructed != c.rebuilt {
				t.Fatalf("rejoin: verified=%v join %+v (%s); want %d rebuilt window records", r.Verify != nil, r.Join, r.Description, c.rebuilt)
			}
		})
	}
}
