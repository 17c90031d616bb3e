package handover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/serialize"
)

// within runs f and fails the test when it has not returned after d (a hang in open(2)).
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func TestStoreFIFO(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 3)
	for _, name := range []string{segmentName(2), manifestName} {
		t.Run(filepath.Base(name), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			copyDir(t, e.store, dir)
			p := filepath.Join(dir, name)
			os.Remove(p)
			if err := unix.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			var errs []error
			within(t, 10*time.Second, "reading a store with a FIFO", func() {
				s, err := OpenStore(dir)
				if err == nil {
					_, err = s.Check()
				}
				errs = append(errs, err)
				c, err := OpenChain(context.Background(), ChainOptions{StoreDir: dir, StoreOnly: true})
				if err == nil {
					_, err = readAllSource(c)
					c.Close()
				}
				errs = append(errs, err)
				_, err = Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: dir, TPM: e.k.TPM(), BusyTimeout: time.Second})
				errs = append(errs, err)
			})
			if name != manifestName {
				errs = errs[:2] // a drain reads no segment (it resumes from the boot hashes)
			}
			for i, err := range errs {
				if err == nil || !strings.Contains(err.Error(), "FIFO") || !strings.Contains(err.Error(), filepath.Base(name)) {
					t.Fatalf("read %d of a store with a FIFO as %s: %v", i, name, err)
				}
			}
			t.Logf("FIFO: %v", errs[0])
		})
	}
}

func TestStoreOwnerAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the store to another uid")
	}
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 2)
	for _, c := range []struct {
		name   string
		edit   func(dir string) error
		expect string
		check  func(fi os.FileInfo) bool
	}{
		{"other-uid", func(dir string) error { return os.Chown(dir, 65534, 65534) }, "owned by uid 65534",
			func(fi os.FileInfo) bool { return fi.Sys().(*syscall.Stat_t).Uid == 65534 }},
		{"mode-0777", func(dir string) error { return os.Chmod(dir, 0o777) }, "mode 0777",
			func(fi os.FileInfo) bool { return fi.Mode().Perm() == 0o777 }},
		{"segments-other-uid", func(dir string) error { return os.Chown(filepath.Join(dir, segmentsDir), 65534, 0) }, "owned by uid 65534", nil},
		{"manifest-0666", func(dir string) error { return os.Chmod(filepath.Join(dir, manifestName), 0o666) }, "mode 0666", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			copyDir(t, e.store, dir)
			if err := c.edit(dir); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(filepath.Join(dir, manifestName))
			_, oerr := OpenStore(dir)
			_, derr := Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: dir, TPM: e.k.TPM(), BusyTimeout: time.Second})
			c2, xerr := OpenChain(context.Background(), ChainOptions{StoreDir: dir, StoreOnly: true})
			if xerr == nil {
				_, xerr = readAllSource(c2)
				c2.Close()
			}
			for _, err := range []error{oerr, derr, xerr} {
				if err == nil || !strings.Contains(err.Error(), c.expect) {
					t.Fatalf("store with %s: %v, want an error naming %q", c.name, err, c.expect)
				}
			}
			t.Logf("%s: %v", c.name, derr)
			if c.check != nil {
				fi, err := os.Lstat(dir)
				if err != nil || !c.check(fi) {
					t.Fatalf("the refused store was changed: %v %v", fi.Mode(), err)
				}
			}
			if after, _ := os.ReadFile(filepath.Join(dir, manifestName)); !bytes.Equal(before, after) {
				t.Fatal("the refused store's manifest was changed")
			}
		})
	}
}

func TestStoreDirCreation(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(5)
	root := t.TempDir()
	t.Run("parents", func(t *testing.T) {
		dir := filepath.Join(root, "var", "lib", "imakexec")
		if _, err := Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: dir, TPM: e.k.TPM()}); err != nil {
			t.Fatalf("drain without var/lib: %v", err)
		}
		for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Dir(dir): 0o755, filepath.Join(root, "var"): 0o755} {
			fi, err := os.Lstat(p)
			if err != nil || !fi.IsDir() || fi.Mode().Perm() != want {
				t.Fatalf("%s: %v %v, want a directory %v", p, fi.Mode(), err, want)
			}
		}
	})
	t.Run("parent-not-a-directory", func(t *testing.T) {
		f := filepath.Join(root, "file")
		os.WriteFile(f, nil, 0o600)
		_, err := Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: filepath.Join(f, "lib", "imakexec"), TPM: e.k.TPM()})
		if err == nil || !strings.Contains(err.Error(), f+" of the store is not a directory") {
			t.Fatalf("drain below a file: %v", err)
		}
		t.Log(err)
	})
	t.Run("parent-not-root", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("the owner rule applies to root")
		}
		p := filepath.Join(root, "user")
		os.Mkdir(p, 0o755)
		os.Chown(p, 65534, 65534)
		_, err := Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: filepath.Join(p, "lib", "imakexec"), TPM: e.k.TPM()})
		if err == nil || !strings.Contains(err.Error(), p+" of the store is owned by uid 65534") {
			t.Fatalf("drain below another user's directory: %v", err)
		}
		t.Log(err)
	})
	t.Run("parent-read-only", func(t *testing.T) {
		ro := mountTmpfs(t, "1m")
		if err := syscall.Mount("tmpfs", ro, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			t.Fatalf("remount read-only: %v", err)
		}
		_, err := Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: filepath.Join(ro, "lib", "imakexec"), TPM: e.k.TPM()})
		if err == nil || !strings.Contains(err.Error(), ro+" is on a read-only file system") {
			t.Fatalf("drain below a read-only directory: %v", err)
		}
		t.Log(err)
	})
}

func TestManifestTooLarge(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 2)
	// A torn last line beyond the limit: sparse, so the test writes nothing.
	p := filepath.Join(e.store, manifestName)
	fi, _ := os.Stat(p)
	if err := os.Truncate(p, MaxManifestSize+1); err != nil {
		t.Fatal(err)
	}
	e.work(20)
	held := len(e.k.Staged()) + len(e.k.List())
	start := time.Now()
	_, err := OpenStore(e.store)
	if !errors.Is(err, ErrManifestTooLarge) || !strings.Contains(err.Error(), fmt.Sprint(MaxManifestSize)) {
		t.Fatalf("open a manifest over the limit: %v", err)
	}
	st := GetStatus(e.paths, e.store, e.k.TPM(), "sim", nil)
	if took := time.Since(start); !errors.Is(st.Store.Error, ErrManifestTooLarge) || took > 2*time.Second {
		t.Fatalf("status on a huge manifest: %v after %v", st.Store.Error, took)
	}
	if _, err := e.drain(BackendStaged, nil); !errors.Is(err, ErrManifestTooLarge) {
		t.Fatalf("drain on a huge manifest: %v", err)
	}
	if fi2, _ := os.Stat(p); fi2.Size() != MaxManifestSize+1 {
		t.Fatalf("manifest was %d bytes, now %d: it was truncated", fi.Size(), fi2.Size())
	}
	if now := len(e.k.Staged()) + len(e.k.List()); now != held {
		t.Fatalf("kernel held %d records, now %d", held, now)
	}
	t.Logf("huge manifest: %v", err)
	// Back under the limit, the torn tail is what a crash leaves: cut off and drained on.
	os.Truncate(p, fi.Size())
	e.mustDrain(BackendStaged)
	e.verify()
}

// appendForged appends a manifest line built from e, chained to the last line as a writer
// that recomputes every derived field would.
func appendForged(t *testing.T, dir string, e Entry) {
	t.Helper()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	e.Index, e.Prev, e.Time = len(s.entries), s.lastHash, time.Now().UTC()
	line, err := encodeEntry(&e)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, manifestName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(line, '\n')); err != nil {
		t.Fatal(err)
	}
}

func TestCraftedManifestValues(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 3)
	s, _ := OpenStore(e.store)
	ki, _ := ReadKernelInfo(e.paths)
	bs := s.Boot(ki.BootID)
	last := s.Segments()[len(s.Segments())-1]
	for _, c := range []struct {
		name   string
		entry  Entry
		expect string
	}{
		{"deleted-beyond-stored", Entry{Type: EntryDeleted, Deleted: &Deletion{BootID: ki.BootID, Through: bs.Stored + 100, Method: BackendStaged}}, "beyond the"},
		{"deleted-mid-segment", Entry{Type: EntryDeleted, Deleted: &Deletion{BootID: ki.BootID, Through: bs.Stored - 1, Method: BackendStaged}}, "not the end of a stored segment"},
		{"deleted-unknown-boot", Entry{Type: EntryDeleted, Deleted: &Deletion{BootID: "x", Through: 1, Method: BackendStaged}}, "no stored records"},
		{"segment-seq-overflow", func() Entry {
			sg := last
			sg.Number++
			sg.File = segmentName(sg.Number)
			sg.FirstSeq = ^uint64(0) - 1
			return Entry{Type: EntrySegment, Segment: &sg}
		}(), "overflows"},
		{"segment-huge-count", func() Entry {
			sg := last
			sg.Number++
			sg.File = segmentName(sg.Number)
			sg.FirstSeq = last.End()
			sg.Boot.FirstIndex = bs.Stored
			sg.Count = 1 << 40
			return Entry{Type: EntrySegment, Segment: &sg}
		}(), "cannot fit"},
		// A segment that starts the boot again below its stored end would make Stored
		// shrink under Deleted (Retained = Stored - Deleted would wrap to 2^64-1).
		{"segment-rewinds-boot", func() Entry {
			sg := last
			sg.Number++
			sg.File = segmentName(sg.Number)
			sg.FirstSeq = last.End()
			sg.Boot.FirstIndex = 0
			return Entry{Type: EntrySegment, Segment: &sg}
		}(), "its stored records end at"},
		{"reconstructed-rewinds-boot", func() Entry {
			sg := last
			sg.Number++
			sg.File = segmentName(sg.Number)
			sg.FirstSeq = last.End()
			sg.Source = SourceReconstructed
			sg.Boot.FirstIndex = bs.Stored - 1
			return Entry{Type: EntrySegment, Segment: &sg}
		}(), "its stored records end at"},
		{"duplicate-from-after-to", func() Entry {
			sg := last
			sg.Number++
			sg.File = segmentName(sg.Number)
			sg.Boot.FirstIndex = bs.Stored
			sg.Duplicates = &DupRef{BootID: ki.BootID, From: sg.Count + 1, To: 1}
			return Entry{Type: EntrySegment, Segment: &sg}
		}(), "repeats records"},
		{"segment-unknown-scheme", func() Entry {
			sg := last
			sg.Number++
			sg.File = segmentName(sg.Number)
			sg.FirstSeq = last.End()
			sg.Boot.FirstIndex = bs.Stored
			sg.Scheme = "hash2"
			return Entry{Type: EntrySegment, Segment: &sg}
		}(), "unknown extend scheme"},
		{"join-duplicated-over-carried", Entry{Type: EntryJoin, Join: &Join{BootID: "x", Generation: 1, KernelCarried: 1, Duplicated: 2}}, "2 duplicated of 1 carried"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "store")
			copyDir(t, e.store, dir)
			appendForged(t, dir, c.entry)
			e.work(7)
			staged, list := len(e.k.Staged()), len(e.k.List())
			var err error
			within(t, 20*time.Second, "drain", func() {
				_, err = Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: dir, TPM: e.k.TPM(), BusyTimeout: time.Second})
			})
			var te *TamperError
			if !errors.As(err, &te) || te.Line != len(s.entries)+1 || !strings.Contains(err.Error(), c.expect) {
				t.Fatalf("drain on a manifest with %s: %v, want a TamperError at line %d naming %q", c.name, err, len(s.entries)+1, c.expect)
			}
			if len(e.k.Staged()) != staged || len(e.k.List()) != list || staged != 0 {
				t.Fatalf("kernel held %d staged + %d, now %d + %d: the drain touched the kernel", staged, list, len(e.k.Staged()), len(e.k.List()))
			}
			t.Log(err)
		})
	}
}

func TestExportWaitsForDrain(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 2)
	e.work(300)
	// The whole chain, read before the drain.
	want := exportAll(t, e)
	paused, resume := make(chan struct{}), make(chan struct{})
	drained := make(chan error, 1)
	go func() {
		_, err := e.drain(BackendStaged, func(s Step, n uint64) error {
			if s == StepDeleted {
				close(paused)
				<-resume
			}
			return nil
		})
		drained <- err
	}()
	<-paused // the kernel has deleted, the manifest does not say so yet
	got := make(chan [][]byte, 1)
	go func() { got <- exportAll(t, e) }()
	select {
	case <-got:
		t.Fatal("export ran while a drain held the store")
	case <-time.After(500 * time.Millisecond):
	}
	close(resume)
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	g := <-got
	if len(g) != len(want) {
		t.Fatalf("export during a drain wrote %d records, the chain has %d", len(g), len(want))
	}
	for i := range g {
		if !bytes.Equal(g[i], want[i]) {
			t.Fatalf("record %d differs", i)
		}
	}
}

func exportAll(t *testing.T, e *kenv) [][]byte {
	var out [][]byte
	dg := serialize.NewDigester()
	_, err := Export(context.Background(), ExportOptions{ChainOptions: ChainOptions{Paths: e.paths, StoreDir: e.store}}, func(r *serialize.Record) error {
		b, err := serialize.AppendKexecRecord(nil, r, dg, storeOrder)
		out = append(out, b)
		return err
	})
	if err != nil {
		t.Errorf("export: %v", err)
	}
	return out
}

func TestVerifyReadOnlyStore(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	dir := mountTmpfs(t, "4m")
	e.store = filepath.Join(dir, "store")
	e.work(10)
	e.mustDrain(BackendStaged)
	e.work(3)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	r, err := Verify(context.Background(), VerifyOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM()})
	if err != nil {
		t.Fatalf("verify on a read-only store: %v", err)
	}
	if n := len(exportAll(t, e)); uint64(n) != r.Records {
		t.Fatalf("export on a read-only store: %d records, verify counted %d", n, r.Records)
	}
}

func readAllSource(src serialize.Source) (int, error) {
	n := 0
	for {
		_, err := src.Next()
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}

func TestLockNamesHolder(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(5)
	e.mustDrain(BackendStaged)
	f, err := os.OpenFile(filepath.Join(e.store, lockName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	holder := fmt.Sprintf("held by pid %d", os.Getpid())
	_, err = Drain(context.Background(), DrainOptions{Paths: e.paths, StoreDir: e.store, TPM: e.k.TPM(), NoWait: true})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), holder) {
		t.Fatalf("drain --no-wait on a held store: %v, want ErrLocked naming %q", err, holder)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	s := &Store{dir: e.store}
	if err := s.RLock(ctx); !errors.Is(err, ErrLocked) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), holder) {
		t.Fatalf("shared lock behind a writer: %v", err)
	}
	t.Log(err)
	// Readers share: two shared locks at once.
	unix.Flock(int(f.Fd()), unix.LOCK_SH)
	if err := s.RLock(context.Background()); err != nil {
		t.Fatalf("shared lock beside a reader: %v", err)
	}
	s.Unlock()
}
