package initramfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// unpack writes a handoff archive into root the way the kernel would (regular files and
// directories only; the archive was checked by ReadImageHandoff first).
func unpack(t *testing.T, root string, img []byte) {
	t.Helper()
	if _, err := ReadImageHandoff(bytes.NewReader(img), int64(len(img)), Limits{}); err != nil {
		t.Fatal(err)
	}
	_, err := Walk(bytes.NewReader(img), int64(len(img)), Limits{}, func(e *Entry, data io.Reader) error {
		p := filepath.Join(root, e.Name)
		if e.Type() == ModeDir {
			return os.MkdirAll(p, 0o700)
		}
		b, _ := io.ReadAll(data)
		return os.WriteFile(p, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

type fakeRejoiner struct {
	h     *Handoff
	store string
	v     *Verdict
	err   error
}

func (r *fakeRejoiner) Rejoin(_ context.Context, h *Handoff, store string) (*Verdict, error) {
	r.h, r.store = h, store
	return r.v, r.err
}

func TestHookCopiesStoreAndPrintsVerdict(t *testing.T) {
	root := t.TempDir()
	arch, err := HandoffArchive(testHandoff(), testStore())
	if err != nil {
		t.Fatal(err)
	}
	unpack(t, root, arch)
	var mounts []string
	var console bytes.Buffer
	rj := &fakeRejoiner{v: &Verdict{Verified: true, Summary: "42 records,\nsha1+sha256 match"}}
	res := RunHook(context.Background(), HookOptions{Root: root, Mount: true, Console: &console,
		Mounter: func(src, target, fstype string, _ uintptr, _ string) error {
			mounts = append(mounts, fstype+":"+strings.TrimPrefix(target, root))
			return nil
		}}, rj)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if strings.Join(mounts, " ") != "proc:/proc sysfs:/sys devtmpfs:/dev securityfs:/sys/kernel/security tmpfs:/run" {
		t.Errorf("mounts %v", mounts)
	}
	if console.String() != "imakexec: VERIFIED: 42 records, sha1+sha256 match\n" {
		t.Errorf("console %q", console.String())
	}
	if rj.h == nil || rj.store != filepath.Join(root, "run/imakexec") {
		t.Fatalf("rejoin got %v %q", rj.h, rj.store)
	}
	for _, f := range testStore() {
		b, err := os.ReadFile(filepath.Join(rj.store, f.Name))
		if err != nil || !bytes.Equal(b, f.Data) {
			t.Errorf("%s: %v", f.Name, err)
		}
		fi, _ := os.Stat(filepath.Join(rj.store, f.Name))
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", f.Name, fi.Mode())
		}
	}
	if _, err := os.Stat(filepath.Join(root, HandoffDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("handoff dir left behind: %v", err)
	}
}

func TestHookWithoutHandoff(t *testing.T) {
	var console bytes.Buffer
	rj := &fakeRejoiner{err: errors.New("rejoin not available")}
	res := RunHook(context.Background(), HookOptions{Root: t.TempDir(), Console: &console}, rj)
	if rj.h != nil || res.Err == nil || !strings.Contains(console.String(), "NOT VERIFIED: rejoin not available (no handoff") {
		t.Fatalf("console %q, err %v", console.String(), res.Err)
	}
}

func TestHookRefusesTamperedHandoff(t *testing.T) {
	cases := map[string]func(root string){
		"store file changed": func(root string) {
			os.WriteFile(filepath.Join(root, "imakexec/store/manifest.json"), []byte(`{"v":2}`), 0o600)
		},
		"unlisted file": func(root string) {
			os.WriteFile(filepath.Join(root, "imakexec/store/extra"), nil, 0o600)
		},
		"symlinked store file": func(root string) {
			p := filepath.Join(root, "imakexec/store/manifest.json")
			os.Remove(p)
			os.Symlink("/etc/passwd", p)
		},
		"symlinked handoff.json": func(root string) {
			p := filepath.Join(root, "imakexec/handoff.json")
			os.Rename(p, p+".real")
			os.Symlink(p+".real", p)
		},
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			arch, _ := HandoffArchive(testHandoff(), testStore())
			unpack(t, root, arch)
			tamper(root)
			var console bytes.Buffer
			rj := &fakeRejoiner{v: &Verdict{Verified: true}}
			res := RunHook(context.Background(), HookOptions{Root: root, Console: &console}, rj)
			if !errors.Is(res.Err, ErrHandoff) || rj.store != "" || !strings.HasPrefix(console.String(), "imakexec: NOT VERIFIED:") {
				t.Fatalf("err %v, console %q", res.Err, console.String())
			}
		})
	}
}

func TestHookFlagsAndArgv0(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/imakexec"), 0o755)
	os.WriteFile(filepath.Join(root, HookFlagsFile), []byte("# c\n--store /run/x  --next /sbin/init\n"), 0o644)
	args, err := ReadHookFlags(root)
	if err != nil || strings.Join(args, " ") != "--store /run/x --next /sbin/init" {
		t.Fatalf("%q %v", args, err)
	}
	for _, c := range []struct {
		argv0 string
		pid   int
		want  bool
	}{{"/bin/uinit", 99, true}, {"/init", 1, true}, {"/init", 5, false}, {"imakexec", 1, false}, {"/usr/bin/imakexec", 7, false}} {
		if got := IsHookArgv0(c.argv0, c.pid); got != c.want {
			t.Errorf("IsHookArgv0(%q, %d) = %v", c.argv0, c.pid, got)
		}
	}
}

func TestBuildInitramfs(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "imakexec")
	uinit := filepath.Join(dir, "init")
	kern := filepath.Join(dir, "vmlinuz")
	os.WriteFile(self, []byte("SELF"), 0o755)
	os.WriteFile(uinit, []byte("UROOT-INIT"), 0o755)
	os.WriteFile(kern, []byte("KERNEL"), 0o644)
	for _, withInit := range []bool{true, false} {
		var buf bytes.Buffer
		o := BuildOptions{Self: self, Files: []string{kern + ":boot/vmlinuz"}, HookArgs: []string{"--store /run/imakexec"}}
		if withInit {
			o.Init = uinit
		}
		if err := BuildInitramfs(&buf, o); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		var console *Entry
		_, err := Walk(bytes.NewReader(buf.Bytes()), int64(buf.Len()), Limits{}, func(e *Entry, data io.Reader) error {
			b, _ := io.ReadAll(data)
			got[e.Name] = string(b)
			if e.Name == "dev/console" {
				c := *e
				console = &c
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if console == nil || console.Type() != ModeChar || console.RDevMajor != 5 || console.RDevMinor != 1 {
			t.Errorf("dev/console %+v", console)
		}
		if got["boot/vmlinuz"] != "KERNEL" || !strings.Contains(got[HookFlagsFile], "--store /run/imakexec") {
			t.Errorf("files %v", got)
		}
		if withInit && (got["init"] != "UROOT-INIT" || got["bin/uinit"] != "SELF") {
			t.Errorf("with init: init=%q uinit=%q", got["init"], got["bin/uinit"])
		}
		if !withInit {
			if _, ok := got["bin/uinit"]; ok || got["init"] != "SELF" {
				t.Errorf("without init: init=%q", got["init"])
			}
		}
		for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "boot", "etc/imakexec"} {
			if _, ok := got[d]; !ok {
				t.Errorf("no directory %s", d)
			}
		}
	}
}
