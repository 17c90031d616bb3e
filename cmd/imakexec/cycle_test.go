package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

// buildBinary builds imakexec once per test binary.
var builtBinary string

func imakexecBinary(t testing.TB) string {
	t.Helper()
	if builtBinary != "" {
		return builtBinary
	}
	dir, err := os.MkdirTemp("", "imakexec-bin")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "imakexec")
	cmd := exec.Command("go", "build", "-o", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	builtBinary = out
	return out
}

// simProc runs `imakexec sim` as a user would and feeds it events.
type simProc struct {
	t     *testing.T
	cmd   *exec.Cmd
	ctl   string
	out   *bufio.Scanner
	dir   string
	mount string
	sock  string
	proc  string
}

func startSim(t *testing.T, bin, profile string) *simProc {
	kmodeltest.RequireFUSE(t)
	dir := t.TempDir()
	sockDir, err := os.MkdirTemp("", "sim") // unix socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	s := &simProc{t: t, dir: dir, mount: filepath.Join(dir, "sec"), sock: filepath.Join(sockDir, "tpm"), proc: filepath.Join(dir, "proc"), ctl: filepath.Join(dir, "events")}
	os.Mkdir(s.mount, 0o755)
	os.WriteFile(s.ctl, nil, 0o600)
	s.cmd = exec.Command(bin, "sim", "--profile", profile, "--mount", s.mount, "--tpm-socket", s.sock, "--control", s.ctl, "--proc", s.proc)
	stdout, _ := s.cmd.StdoutPipe()
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- s.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			s.cmd.Process.Kill()
			t.Error("sim did not stop on SIGINT")
		}
	})
	s.out = bufio.NewScanner(stdout)
	s.line() // {"event":"ready",...}
	return s
}

func (s *simProc) line() map[string]any {
	s.t.Helper()
	lines := make(chan string, 1)
	go func() {
		if s.out.Scan() {
			lines <- s.out.Text()
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok {
			s.t.Fatal("sim exited")
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			s.t.Fatalf("sim printed %q", l)
		}
		return m
	case <-time.After(30 * time.Second):
		s.t.Fatal("no answer from sim")
	}
	return nil
}

// event appends one event line and waits for its outcome.
func (s *simProc) event(ev string) map[string]any {
	s.t.Helper()
	f, err := os.OpenFile(s.ctl, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	fmt.Fprintln(f, ev)
	f.Close()
	m := s.line()
	if m["ok"] != true {
		s.t.Fatalf("event %q: %v", ev, m)
	}
	return m
}

// cli runs the imakexec binary against the sim and returns exit code and stdout.
func (s *simProc) cli(bin string, args ...string) (int, string) {
	s.t.Helper()
	all := append([]string{"--securityfs", s.mount, "--tpm", "unix:" + s.sock}, args...)
	all = append(all, "--proc", s.proc)
	cmd := exec.Command(bin, all...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatal(err)
	}
	if code != 0 {
		s.t.Logf("imakexec %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
	return code, out.String()
}

// handoff writes what `imakexec kexec` would carry for this load.
func (s *simProc) handoff(kernel, initrd string) string {
	s.t.Helper()
	dir := filepath.Join(s.dir, "handoff")
	os.MkdirAll(filepath.Join(dir, "store"), 0o700)
	kb, _ := os.ReadFile(kernel)
	k1, k256 := sha1.Sum(kb), sha256.Sum256(kb)
	h := &initramfs.Handoff{Format: initramfs.HandoffFormat, Version: initramfs.HandoffVersion,
		OldKernel: initramfs.OldKernel{IMAHash: "sha256", Templates: []string{"ima-ng"}},
		Kernel:    initramfs.KernelImage{Path: kernel, ResolvedPath: kernel, Size: int64(len(kb)), Digests: map[string]string{"sha1": hex.EncodeToString(k1[:]), "sha256": hex.EncodeToString(k256[:])}, Mode: 0o100644},
		Initrd:    initramfs.InitrdImage{MemfdName: initramfs.MemfdName, ResolvedPath: initrd},
		Store:     initramfs.StoreInfo{Dir: initramfs.HandoffStoreDir},
	}
	b, err := initramfs.MarshalHandoff(h)
	if err != nil {
		s.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "handoff.json"), b, 0o600)
	return dir
}

// TestCLICycle scripts the whole cycle through `imakexec sim` and the CLI, as users and CI
// see it: workload, rejoin (new chain), drain, kexec-load, kexec-execute, rejoin with the
// handoff, verify, export; then evmctl on the export and a tampered store.
func TestCLICycle(t *testing.T) {
	bin := imakexecBinary(t)
	for _, profile := range []string{"debian-6.1", "6.1-ima-kexec", "7.2"} {
		t.Run(profile, func(t *testing.T) {
			s := startSim(t, bin, profile)
			store := filepath.Join(s.dir, "store")
			files := filepath.Join(s.dir, "files")
			os.Mkdir(files, 0o755)
			for i := 0; i < 4; i++ {
				p := filepath.Join(files, fmt.Sprint("tool", i))
				os.WriteFile(p, []byte(p), 0o755)
				s.event("exec " + p)
			}
			if code, _ := s.cli(bin, "rejoin", "--store", store); code != 0 {
				t.Fatal("first rejoin")
			}
			for gen := 1; gen <= 2; gen++ {
				s.event("synthetic 25")
				s.event("violation " + filepath.Join(files, "tool0"))
				if code, _ := s.cli(bin, "drain", "--store", store); code != 0 {
					t.Fatal("drain")
				}
				kernel, initrd := filepath.Join(files, "vmlinuz"), filepath.Join(files, fmt.Sprint("initrd", gen))
				os.WriteFile(kernel, []byte("kernel image"), 0o644)
				os.WriteFile(initrd, []byte(fmt.Sprint("initrd ", gen)), 0o644)
				ib, _ := os.ReadFile(initrd)
				sum := sha256.Sum256(ib)
				h := s.handoff(kernel, initrd)
				s.event(fmt.Sprintf("kexec-load %s %s console=ttyS0 %s=sha256:%x", kernel, initrd, initramfs.CmdlineParam, sum))
				s.event("kexec-execute")
				code, out := s.cli(bin, "rejoin", "--store", store, "--handoff", h, "--json")
				if code != 0 {
					t.Fatalf("rejoin after kexec %d: exit %d", gen, code)
				}
				var rj map[string]any
				json.Unmarshal([]byte(out), &rj)
				if rj["joined"] != true {
					t.Fatalf("rejoin: %s", out)
				}
				s.event("synthetic 5") // live records not yet stored
			}
			code, out := s.cli(bin, "verify", "--store", store, "--json")
			var v struct {
				Verified bool                         `json:"verified"`
				Records  uint64                       `json:"records"`
				Extra    int                          `json:"extra"`
				PCRs     map[string]map[string]string `json:"pcrs"`
			}
			if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || !v.Verified || v.Extra != 0 || len(v.PCRs["10"]) == 0 {
				t.Fatalf("verify: exit %d %s", code, out)
			}
			// export, and evmctl over every record against the TPM's PCRs.
			list := filepath.Join(s.dir, "chain.bin")
			if code, _ := s.cli(bin, "export", "--store", store, "--format", "binary", "-o", list); code != 0 {
				t.Fatal("export")
			}
			n := countRecords(t, list)
			if uint64(n) != v.Records {
				t.Fatalf("exported %d records, verify proved %d", n, v.Records)
			}
			tp, err := handover.OpenTPM("unix:" + s.sock)
			if err != nil {
				t.Fatal(err)
			}
			pcrs, err := handover.ReadPCRs(tp, []serialize.Bank{serialize.SHA1, serialize.SHA256}, []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
			tp.Close()
			if err != nil {
				t.Fatal(err)
			}
			lb, _ := os.ReadFile(list)
			testenv.EvmctlWhole(t, lb, pcrs, n)
			// A flipped byte in a stored segment: verify exits 1 and names the file.
			segs, _ := filepath.Glob(filepath.Join(store, "segments", "*.kexec"))
			b, _ := os.ReadFile(segs[0])
			b[len(b)-2] ^= 1
			os.WriteFile(segs[0], b, 0o600)
			if code, out := s.cli(bin, "verify", "--store", store); code != 1 || !strings.Contains(out, "segments/") {
				t.Fatalf("tampered store: exit %d, %s", code, out)
			}
		})
	}
}

func countRecords(t *testing.T, path string) int {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	br := serialize.NewBinaryReader(f, serialize.NewDigester().Order, 20)
	n := 0
	for {
		_, err := br.Next()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
}
