package handover

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

// storeWithSegments drains several times so the store has at least n segments.
func storeWithSegments(t *testing.T, e *kenv, n int) {
	for i := 0; i < n; i++ {
		e.work(10)
		e.mustDrain(BackendStaged)
	}
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

func TestTamper(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 4)
	e.verify()
	seg := func(dir string, n int) string { return filepath.Join(dir, segmentName(n)) }
	cases := []struct {
		name   string
		edit   func(dir string)
		expect string
	}{
		{"flipped-byte", func(dir string) {
			b, _ := os.ReadFile(seg(dir, 2))
			b[len(b)-3] ^= 1
			os.WriteFile(seg(dir, 2), b, 0o600)
		}, "00000002.kexec"},
		{"removed-segment", func(dir string) { os.Remove(seg(dir, 3)) }, "segment 3 is missing"},
		{"reordered-segments", func(dir string) {
			os.Rename(seg(dir, 2), seg(dir, 9))
			os.Rename(seg(dir, 3), seg(dir, 2))
			os.Rename(seg(dir, 9), seg(dir, 3))
		}, "00000002.kexec"},
		{"edited-manifest", func(dir string) {
			p := filepath.Join(dir, manifestName)
			b, _ := os.ReadFile(p)
			lines := bytes.Split(b, []byte("\n"))
			lines[3] = bytes.Replace(lines[3], []byte(`"time":"2`), []byte(`"time":"1`), 1)
			os.WriteFile(p, bytes.Join(lines, []byte("\n")), 0o600)
		}, "line 4"},
		{"removed-manifest-line", func(dir string) {
			p := filepath.Join(dir, manifestName)
			b, _ := os.ReadFile(p)
			lines := bytes.Split(b, []byte("\n"))
			lines = append(lines[:3], lines[4:]...)
			os.WriteFile(p, bytes.Join(lines, []byte("\n")), 0o600)
		}, "line 4"},
		{"edited-pcrs-last", func(dir string) {
			p := filepath.Join(dir, manifestName)
			b, _ := os.ReadFile(p)
			lines := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
			for i := len(lines) - 1; i >= 0; i-- {
				if bytes.Contains(lines[i], []byte(`"segment":`)) {
					j := bytes.Index(lines[i], []byte(`"sha1":"`)) + 8
					lines[i][j] ^= 1
					break
				}
			}
			os.WriteFile(p, append(bytes.Join(lines, []byte("\n")), '\n'), 0o600)
		}, "line"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "s")
			copyDir(t, e.store, dir)
			c.edit(dir)
			s, err := OpenStore(dir)
			if err == nil {
				_, err = s.Check()
			}
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("tampered store: %v, want ErrTampered", err)
			}
			if !strings.Contains(err.Error(), c.expect) {
				t.Fatalf("error %q does not name %q", err, c.expect)
			}
			t.Logf("detected: %v", err)
		})
	}
}

func TestSymlinkRefused(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.Mkdir(real, 0o700)
	link := filepath.Join(dir, "link")
	os.Symlink(real, link)
	s := &Store{dir: link}
	if _, err := OpenStore(link); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("open via symlink: %v", err)
	}
	if err := s.TryLock(); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("lock via symlink: %v", err)
	}
}

func TestBindingArchive(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(10)
	e.mustDrain(BackendAuto)
	if err := e.k.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	st := GetStatus(e.paths, e.store, e.k.TPM(), "sim", nil)
	if st.Store.BindingMatch == nil || *st.Store.BindingMatch || !strings.Contains(st.Store.BindingNote, "archives") {
		t.Fatalf("status after cold boot: match %v note %q", st.Store.BindingMatch, st.Store.BindingNote)
	}
	e.work(5)
	r := e.mustDrain(BackendAuto)
	if r.Archived == "" {
		t.Fatal("store of the earlier power cycle was not archived")
	}
	if r.Generation != 0 || r.Chain != r.Stored {
		t.Fatalf("new chain: generation %d, chain %d, stored %d", r.Generation, r.Chain, r.Stored)
	}
	e.verify()
	st = GetStatus(e.paths, e.store, e.k.TPM(), "sim", nil)
	if len(st.Store.Archives) != 1 || !*st.Store.BindingMatch {
		t.Fatalf("status: archives %v match %v", st.Store.Archives, *st.Store.BindingMatch)
	}
}

// mountTmpfs mounts a tmpfs of the given size (root only).
func mountTmpfs(t *testing.T, size string) string {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		testenv.Missing(t, "mount tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func TestDiskFull(t *testing.T) {
	for _, b := range []Backend{BackendStaged, BackendDeleteN} {
		t.Run(string(b), func(t *testing.T) {
			e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
			e.store = filepath.Join(mountTmpfs(t, "64k"), "store")
			e.work(1200) // ~150 KiB of records
			before := len(e.k.Staged()) + len(e.k.List())
			_, err := e.drain(b, nil)
			if err == nil || !strings.Contains(err.Error(), "no space left on device") {
				t.Fatalf("drain into a full store: %v", err)
			}
			t.Logf("full disk: %v", err)
			if after := len(e.k.Staged()) + len(e.k.List()); after != before {
				t.Fatalf("kernel held %d records before, %d after a failed drain", before, after)
			}
			e.verify()
		})
	}
}

func TestReadOnlyStore(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	dir := mountTmpfs(t, "4m")
	e.store = filepath.Join(dir, "store")
	e.work(10)
	e.mustDrain(BackendStaged)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	e.work(10)
	before := len(e.k.Staged()) + len(e.k.List())
	_, err := e.drain(BackendStaged, nil)
	if err == nil || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("drain into a read-only store: %v", err)
	}
	t.Logf("read-only: %v", err)
	if after := len(e.k.Staged()) + len(e.k.List()); after != before {
		t.Fatalf("kernel held %d records before, %d after", before, after)
	}
	e.verify()
}

// TestTPM checks the TPM helpers against the simulator: banks, clock, and PCR reads past
// the eight-digest limit, compared with a software extend.
func TestTPM(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72, NoFirmware: true})
	tpm := e.k.TPM()
	banks, err := ActiveBanks(tpm)
	if err != nil || len(banks) < 2 {
		t.Fatalf("banks %v: %v", banks, err)
	}
	r1, _, err := ReadClock(tpm)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.k.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	r2, _, _ := ReadClock(tpm)
	if r2 != r1+1 {
		t.Fatalf("resetCount %d after cold boot from %d", r2, r1)
	}
	pcrs := []uint32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 23}
	v, err := ReadPCRs(tpm, banks, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pcrs {
		for _, b := range banks {
			if len(v.Get(p, b.Name)) != b.Size {
				t.Fatalf("PCR %d bank %s missing", p, b.Name)
			}
		}
	}
	// PCR 10 equals the replay of the kernel's list
	rp, _ := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks})
	for _, r := range e.k.List() {
		rp.Add(&r)
	}
	if _, err := rp.Result().Verify(serialize.PCRValues{10: v[10]}); err != nil {
		t.Fatalf("PCR 10 vs replay: %v", err)
	}
	if _, err := OpenTPM("unix:" + filepath.Join(t.TempDir(), "none")); !errors.Is(err, ErrNoTPM) {
		t.Fatalf("missing socket: %v", err)
	}
	_ = context.Background
}
