package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
)

// mknodNull makes a character device 1:3 (what /dev/null is) in dir; never the real one.
func mknodNull(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "null")
	if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("mknod needs CAP_MKNOD: %v", err)
	}
	return p
}

func isNullDevice(t *testing.T, p string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(uint64(st.Rdev)) != 1 || unix.Minor(uint64(st.Rdev)) != 3 {
		t.Fatalf("%s is no longer the character device 1:3 (mode %o)", p, st.Mode)
	}
}

// noTemp fails when dir holds anything but the names given.
func noTemp(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.Contains(strings.Join(names, "/"), e.Name()) {
			t.Fatalf("left behind in %s: %s", dir, e.Name())
		}
	}
}

func TestConvertOutputKinds(t *testing.T) {
	in := vm + "ima-sig/binary_runtime_measurements"
	dir := t.TempDir()
	for _, to := range []string{"ascii", "kexec"} {
		ref := filepath.Join(dir, "ref."+to)
		if code, _, stderr := runCLI(t, "", "convert", "--to", to, in, ref); code != 0 {
			t.Fatalf("convert to a file: %s", stderr)
		}
		want, _ := os.ReadFile(ref)
		t.Run(to+"/device", func(t *testing.T) {
			d := t.TempDir()
			null := mknodNull(t, d)
			if code, _, stderr := runCLI(t, "", "convert", "--to", to, in, null); code != 0 {
				t.Fatalf("convert to a device: exit %d %s", code, stderr)
			}
			isNullDevice(t, null)
			noTemp(t, d, "null")
		})
		t.Run(to+"/fifo", func(t *testing.T) {
			d := t.TempDir()
			fifo := filepath.Join(d, "fifo")
			if err := unix.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			got := make(chan []byte)
			go func() {
				f, _ := os.Open(fifo)
				b, _ := io.ReadAll(f)
				f.Close()
				got <- b
			}()
			if code, _, stderr := runCLI(t, "", "convert", "--to", to, in, fifo); code != 0 {
				t.Fatalf("convert to a FIFO: exit %d %s", code, stderr)
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("FIFO got %d bytes, a file %d", len(b), len(want))
			}
			if fi, _ := os.Lstat(fifo); fi.Mode()&os.ModeNamedPipe == 0 {
				t.Fatal("the FIFO was replaced")
			}
		})
		t.Run(to+"/symlink", func(t *testing.T) {
			d := t.TempDir()
			target := filepath.Join(d, "target")
			os.WriteFile(target, []byte("keep"), 0o644)
			link := filepath.Join(d, "link")
			os.Symlink(target, link)
			if code, _, stderr := runCLI(t, "", "convert", "--to", to, in, link); code != exitError || !strings.Contains(stderr, "symlink") {
				t.Fatalf("convert to a symlink: exit %d %s", code, stderr)
			}
			if b, _ := os.ReadFile(target); string(b) != "keep" {
				t.Fatal("the symlink's target was written")
			}
			if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
				t.Fatal("the symlink was replaced")
			}
		})
	}
}

// modelCLI mounts a kernel model and runs the CLI in-process against it.
type modelCLI struct {
	t     testing.TB
	env   *kmodeltest.Env
	store string
	files int
}

func newModelCLI(t testing.TB, cfg kmodel.Config) *modelCLI {
	env := kmodeltest.Mount(t, cfg)
	return &modelCLI{t: t, env: env, store: filepath.Join(t.TempDir(), "store")}
}

func (m *modelCLI) args(args ...string) []string {
	return append([]string{"--securityfs", m.env.Securityfs, "--tpm", "unix:" + m.env.TPMSocket, args[0], "--proc", m.env.Proc, "--store", m.store}, args[1:]...)
}

func (m *modelCLI) run(args ...string) (int, string, string) {
	m.t.Helper()
	return runCLI(m.t, "", m.args(args...)...)
}

func (m *modelCLI) must(args ...string) string {
	m.t.Helper()
	code, out, stderr := m.run(args...)
	if code != 0 {
		m.t.Fatalf("imakexec %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

func (m *modelCLI) work(n int) {
	for i := 0; i < n; i++ {
		m.files++
		p := fmt.Sprintf("/usr/bin/t%d", m.files)
		if _, err := m.env.Kernel.Exec(p, []byte(p)); err != nil {
			m.t.Fatal(err)
		}
	}
}

func TestExportOutputAndAppend(t *testing.T) {
	m := newModelCLI(t, kmodel.Config{Profile: kmodel.Profile72})
	m.work(50)
	m.must("drain")
	m.work(20)
	d := t.TempDir()
	t.Run("device", func(t *testing.T) {
		null := mknodNull(t, t.TempDir())
		for _, f := range []string{"binary", "ascii", "kexec"} {
			m.must("export", "--format", f, "-o", null)
			isNullDevice(t, null)
		}
	})
	app := filepath.Join(d, "log.ascii")
	ref := filepath.Join(d, "ref.ascii")
	m.must("export", "--format", "ascii", "--append", app)
	// A reader that keeps the file open, as an attestation agent does.
	agent, err := os.Open(app)
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	first, _ := io.ReadAll(agent)
	for round := 0; round < 3; round++ {
		m.work(30)
		if round != 1 {
			m.must("drain")
		}
		m.must("export", "--format", "ascii", "--append", app)
		m.must("export", "--format", "ascii", "-o", ref)
		want, _ := os.ReadFile(ref)
		got, _ := os.ReadFile(app)
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: --append file (%d bytes) differs from a fresh export (%d bytes)", round, len(got), len(want))
		}
		more, _ := io.ReadAll(agent)
		first = append(first, more...)
		if !bytes.Equal(first, want) {
			t.Fatalf("round %d: the reader that kept the file open read %d bytes, the export has %d", round, len(first), len(want))
		}
	}
	// A file cut inside a record (a crash during an append) is completed.
	want, _ := os.ReadFile(app)
	os.Truncate(app, int64(len(want)-7))
	m.must("export", "--format", "ascii", "--append", app)
	if got, _ := os.ReadFile(app); !bytes.Equal(got, want) {
		t.Fatal("a torn --append file was not completed")
	}
	// Not an earlier export of this chain: refused, and the file is left as it was.
	bad := append([]byte{}, want...)
	bad[len(bad)/2] ^= 0x20
	os.WriteFile(app, bad, 0o644)
	code, _, stderr := m.run("export", "--format", "ascii", "--append", app)
	if code != exitError || !strings.Contains(stderr, "differs from the chain's export at byte") {
		t.Fatalf("--append to a foreign file: exit %d %s", code, stderr)
	}
	if got, _ := os.ReadFile(app); !bytes.Equal(got, bad) {
		t.Fatal("the foreign file was changed")
	}
	os.WriteFile(app, append(want, "10 x\n"...), 0o644)
	if code, _, stderr := m.run("export", "--format", "ascii", "--append", app); code != exitError || !strings.Contains(stderr, "more than the chain's export") {
		t.Fatalf("--append to a longer file: exit %d %s", code, stderr)
	}
	if code, _, _ := m.run("export", "--format", "kexec", "--append", app); code != exitError {
		t.Fatal("--append with the kexec format was accepted")
	}
}
