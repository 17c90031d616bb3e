// This file is long on purpose: it tests the kexec flow's order of operations and every
// refusal against one traced fake of the steps, and the cases share that fake.

package initramfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/storefs"
	"golang.org/x/sys/unix"
)

// trace is the shared, ordered log of everything the flow does.
type trace struct{ ev []string }

func (t *trace) add(s string) { t.ev = append(t.ev, s) }

func (t *trace) index(s string) int {
	for i, e := range t.ev {
		if e == s {
			return i
		}
	}
	return -1
}

// loggedFile logs every read of an input file.
type loggedFile struct {
	*os.File
	tr *trace
}

func (f loggedFile) Read(p []byte) (int, error) {
	f.tr.add("read:" + filepath.Base(f.Name()))
	return f.File.Read(p)
}

func (f loggedFile) ReadAt(p []byte, off int64) (int, error) {
	f.tr.add("read:" + filepath.Base(f.Name()))
	return f.File.ReadAt(p, off)
}

type fakeSteps struct {
	tr      *trace
	state   State
	drained Drained
	onDrain func()
}

func (s *fakeSteps) Inspect(context.Context) (*State, error) {
	s.tr.add("steps.inspect")
	st := s.state
	return &st, nil
}

func (s *fakeSteps) Drain(context.Context) (*Drained, error) {
	s.tr.add("steps.drain")
	if s.onDrain != nil {
		s.onDrain()
	}
	d := s.drained
	return &d, nil
}

type fakeKexec struct {
	tr      *trace
	kernel  []byte
	initrd  []byte
	cmdline string
	loadErr error
}

func (k *fakeKexec) FileLoad(kfd, ifd int, cmdline string) error {
	k.tr.add("kexec.load")
	if k.loadErr != nil {
		return k.loadErr
	}
	// Read what the kernel would read, through the fds (pread: offsets untouched).
	k.kernel = readFd(kfd)
	k.initrd = readFd(ifd)
	k.cmdline = cmdline
	return nil
}

func readFd(fd int) []byte {
	var out []byte
	buf := make([]byte, 1<<16)
	for off := int64(0); ; {
		n, err := unix.Pread(fd, buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if n == 0 || err != nil {
			return out
		}
	}
}

func (k *fakeKexec) Sync()         { k.tr.add("kexec.sync") }
func (k *fakeKexec) Reboot() error { k.tr.add("kexec.reboot"); return nil }

type env struct {
	tr    *trace
	steps *fakeSteps
	kx    *fakeKexec
	opts  KexecOptions
	dir   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	tr := &trace{}
	proc := filepath.Join(dir, "proc")
	store := filepath.Join(dir, "store")
	for _, d := range []string{proc, filepath.Join(proc, "sys", "kernel"), store} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string, data []byte) {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "vmlinuz"), bytes.Repeat([]byte("KERNEL"), 5000))
	write(filepath.Join(dir, "initrd.img"), zstdBytes(t, baseArchive(t)))
	write(filepath.Join(proc, "cmdline"), []byte("BOOT_IMAGE=/vmlinuz root=/dev/vda imakexec.initrd=sha256:00 quiet\n"))
	write(filepath.Join(proc, "sys", "kernel", "kexec_load_disabled"), []byte("0\n"))
	write(filepath.Join(store, "manifest.json"), []byte(manifest1))
	write(filepath.Join(store, "seg-000001.kexec"), bytes.Repeat([]byte{1}, 300))
	write(filepath.Join(store, ".lock"), nil)
	e := &env{tr: tr, dir: dir}
	e.steps = &fakeSteps{tr: tr, state: State{
		TPM: true, StoreBound: true, Pending: 7, Backend: "snapshot",
		IMAHash: "sha256", Templates: []string{"ima-ng", "ima-buf"}, Banks: []string{"sha1", "sha256"},
	}}
	// The drain wrote one new segment and appended a line to the manifest (as
	// handover.Drain does, handing both over); the old segment is untouched.
	newSeg := bytes.Repeat([]byte{2}, 200)
	e.steps.drained = Drained{Records: 7, Backend: "snapshot", Store: []StoreFile{
		{Name: "manifest.json", Size: int64(len(manifest1 + manifestLine2))},
		{Name: "seg-000001.kexec", Size: 300, SHA256: sha256hex(bytes.Repeat([]byte{1}, 300))},
		{Name: "seg-000002.kexec", Data: newSeg},
	}, Appended: map[string]Appended{"manifest.json": {
		From: int64(len(manifest1)), Data: []byte(manifestLine2), PrevLineSHA256: sha256hex([]byte(`{"segments":1}`)),
	}}}
	// The fake drain changes the files as the real one would, so the carried store can be
	// compared with the disk.
	e.steps.onDrain = func() {
		f, err := os.OpenFile(filepath.Join(store, "manifest.json"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(manifestLine2); err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(store, "seg-000002.kexec"), newSeg)
	}
	e.kx = &fakeKexec{tr: tr}
	e.opts = KexecOptions{
		Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img"),
		ReuseCmdline: true, Store: store, Proc: proc,
		Trace: func(s string) { tr.add("flow." + s) },
		Open: func(name string) (InputFile, error) {
			tr.add("open:" + filepath.Base(name))
			f, err := os.Open(name)
			if err != nil {
				return nil, err
			}
			return loggedFile{f, tr}, nil
		},
		// Store files are opened the flow's real way (storefs), traced like the rest.
		OpenStore: func(dir, rel string) (InputFile, error) {
			tr.add("open:" + path.Base(rel))
			f, err := storefs.OpenFile(dir, rel)
			if err != nil {
				return nil, err
			}
			return loggedFile{f, tr}, nil
		},
	}
	return e
}

const (
	manifest1     = "{\"header\":1}\n{\"segments\":1}\n"
	manifestLine2 = "{\"segments\":2}\n"
)

// diskStore reads the store directory as the flow carries it.
func diskStore(t *testing.T, dir string) map[string]string {
	t.Helper()
	names, err := ListStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(n)))
		if err != nil {
			t.Fatal(err)
		}
		out[n] = string(b)
	}
	return out
}

func sha256hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func (e *env) run(t *testing.T) (*KexecReport, error) {
	t.Helper()
	return RunKexec(context.Background(), e.opts, e.steps, e.kx)
}

func TestKexecOrderOfOperations(t *testing.T) {
	e := newEnv(t)
	rep, err := e.run(t)
	if err != nil {
		t.Fatal(err)
	}
	tr := e.tr
	drain := tr.index("steps.drain")
	if drain < 0 {
		t.Fatalf("no drain in %v", tr.ev)
	}
	// Every input was opened and read before the last drain ...
	for _, in := range []string{"vmlinuz", "initrd.img", "cmdline", "manifest.json", "seg-000001.kexec"} {
		if i := tr.index("open:" + in); i < 0 || i > drain {
			t.Errorf("open:%s at %d, drain at %d", in, i, drain)
		}
		if i := tr.index("read:" + in); i < 0 || i > drain {
			t.Errorf("read:%s at %d, drain at %d", in, i, drain)
		}
	}
	// ... and nothing is opened or read after it.
	for _, ev := range tr.ev[drain:] {
		if strings.HasPrefix(ev, "open:") || strings.HasPrefix(ev, "read:") {
			t.Errorf("%s after the last drain (trace %v)", ev, tr.ev[drain:])
		}
	}
	// Then only writes, then load, sync, reboot, in that order.
	order := []string{"steps.inspect", "flow.open-kernel", "flow.memfd", "flow.open-initrd", "flow.read-cmdline", "flow.read-store",
		"steps.drain", "flow.write-handoff", "kexec.load", "kexec.sync", "kexec.reboot"}
	last := -1
	for _, ev := range order {
		i := tr.index(ev)
		if i <= last {
			t.Fatalf("%s at %d, not after %d: %v", ev, i, last, tr.ev)
		}
		last = i
	}
	if tr.ev[len(tr.ev)-1] != "kexec.reboot" {
		t.Errorf("last event %s", tr.ev[len(tr.ev)-1])
	}

	// What the kernel got: the kernel image, the initrd = base + padding + handoff, and a
	// command line whose digest parameter is the initrd's sha256.
	kern, _ := os.ReadFile(e.opts.Kernel)
	if !bytes.Equal(e.kx.kernel, kern) {
		t.Error("kernel fd does not hold the kernel")
	}
	base, _ := os.ReadFile(e.opts.Initrd)
	if !bytes.HasPrefix(e.kx.initrd, base) {
		t.Error("initrd does not start with the base initrd")
	}
	wantParam := CmdlineParam + "=sha256:" + sha256hex(e.kx.initrd)
	wantCmdline := "BOOT_IMAGE=/vmlinuz root=/dev/vda quiet " + wantParam
	if e.kx.cmdline != wantCmdline {
		t.Errorf("cmdline %q\nwant    %q", e.kx.cmdline, wantCmdline)
	}
	ih, err := ReadImageHandoff(bytes.NewReader(e.kx.initrd), int64(len(e.kx.initrd)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h := ih.Handoff
	if h.Initrd.ArchiveStart != ih.Segments[ih.Segment].Start || h.Initrd.BaseSize != int64(len(base)) {
		t.Errorf("initrd metadata %+v, segments %+v", h.Initrd, ih.Segments)
	}
	if h.Kernel.Digests["sha256"] != sha256hex(kern) || h.Kernel.Size != int64(len(kern)) || !strings.HasSuffix(h.Kernel.ResolvedPath, "vmlinuz") {
		t.Errorf("kernel metadata %+v", h.Kernel)
	}
	if h.Cmdline.Base != "BOOT_IMAGE=/vmlinuz root=/dev/vda quiet" || h.Cmdline.Source != "reuse" {
		t.Errorf("cmdline metadata %+v", h.Cmdline)
	}
	if h.OldKernel.IMAHash != "sha256" || h.OldKernel.IMAHashSource != "log" || h.Drain.Records != 7 {
		t.Errorf("old kernel / drain %+v %+v", h.OldKernel, h.Drain)
	}
	if h.Initrd.MemfdName != MemfdName || !strings.Contains(h.Initrd.ResolvedPath, "memfd:"+MemfdName) || !h.Initrd.Sealed {
		t.Errorf("memfd metadata %+v", h.Initrd)
	}
	got := map[string]string{}
	for _, f := range h.Store.Files {
		got[f.Name] = string(f.Data)
	}
	// The carried store is the store as the drain left it, byte for byte, though nothing
	// was read after the drain: the manifest is the copy read before, joined with the line
	// the drain appended.
	if want := diskStore(t, e.opts.Store); fmt.Sprint(got) != fmt.Sprint(want) || got["manifest.json"] != manifest1+manifestLine2 {
		t.Errorf("carried store %q\nwant %q", got, want)
	}
	if len(h.PostDrainReads) != 0 {
		t.Errorf("post-drain reads %+v", h.PostDrainReads)
	}
	if !rep.Loaded || rep.Cmdline != wantCmdline {
		t.Errorf("report %+v", rep)
	}
}

func TestKexecPostDrainReadIsRecorded(t *testing.T) {
	e := newEnv(t)
	// The drain rewrote seg-000001 without handing over its bytes: the flow must read it
	// again, after the drain, and say so in the handoff.
	newSeg := bytes.Repeat([]byte{9}, 310)
	fakeDrain := e.steps.onDrain
	e.steps.onDrain = func() {
		fakeDrain()
		if err := os.WriteFile(filepath.Join(e.opts.Store, "seg-000001.kexec"), newSeg, 0o600); err != nil {
			t.Error(err)
		}
	}
	e.steps.drained.Store[1] = StoreFile{Name: "seg-000001.kexec", Size: 310}
	if _, err := e.run(t); err != nil {
		t.Fatal(err)
	}
	drain := e.tr.index("steps.drain")
	var after []string
	for _, ev := range e.tr.ev[drain:] {
		if strings.HasPrefix(ev, "open:") {
			after = append(after, ev)
		}
	}
	if fmt.Sprint(after) != "[open:seg-000001.kexec]" {
		t.Fatalf("opens after drain: %v", after)
	}
	ih, err := ReadImageHandoff(bytes.NewReader(e.kx.initrd), int64(len(e.kx.initrd)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	r := ih.Handoff.PostDrainReads
	if len(r) != 1 || !strings.HasSuffix(r[0].Path, "seg-000001.kexec") || r[0].Digest != "sha256:"+sha256hex(newSeg) {
		t.Fatalf("post-drain reads %+v", r)
	}
}

func TestKexecLoadOnly(t *testing.T) {
	e := newEnv(t)
	e.opts.LoadOnly = true
	rep, err := e.run(t)
	if err != nil {
		t.Fatal(err)
	}
	if e.tr.index("kexec.load") < 0 || e.tr.index("kexec.sync") >= 0 || e.tr.index("kexec.reboot") >= 0 {
		t.Fatalf("trace %v", e.tr.ev)
	}
	ih, err := ReadImageHandoff(bytes.NewReader(e.kx.initrd), int64(len(e.kx.initrd)), Limits{})
	if err != nil || !ih.Handoff.LoadOnly || !rep.Loaded {
		t.Fatalf("load-only handoff: %v %+v", err, ih)
	}
}

func TestKexecDryRunChangesNothing(t *testing.T) {
	e := newEnv(t)
	e.opts.DryRun = true
	rep, err := e.run(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range []string{"steps.drain", "flow.memfd", "kexec.load", "kexec.reboot", "kexec.sync"} {
		if e.tr.index(ev) >= 0 {
			t.Errorf("dry run did %s", ev)
		}
	}
	if rep.Pending != 7 || rep.Store.Files != 2 || len(rep.Predicted) < 3 || rep.Kernel.Digests["sha256"] == "" {
		t.Errorf("plan %+v", rep)
	}
	if fmt.Sprint(rep.Segments) != "[zstd]" {
		t.Errorf("segments %v", rep.Segments)
	}
}

func TestKexecRefusals(t *testing.T) {
	cases := []struct {
		name     string
		mod      func(e *env)
		code     string
		forcible bool
	}{
		{"no TPM", func(e *env) { e.steps.state.TPM = false; e.steps.state.TPMDetail = "/dev/tpmrm0: no such file" }, "no-tpm", true},
		{"foreign store", func(e *env) { e.steps.state.StoreBound = false; e.steps.state.StoreDetail = "resetCount 3 vs 4" }, "foreign-store", true},
		{"unknown ima_hash", func(e *env) { e.steps.state.IMAHash = "sm3" }, "unpredictable", true},
		{"unpredictable template", func(e *env) { e.steps.state.Templates = []string{"evm-sig"} }, "unpredictable", true},
		{"unknown custom template field", func(e *env) { e.steps.state.Templates = []string{"d-ng|n-ng|newfield"} }, "unpredictable", true},
		{"modsig kernel", func(e *env) {
			e.steps.state.Templates = []string{"ima-modsig"}
			os.WriteFile(e.opts.Kernel, append(bytes.Repeat([]byte("K"), 100), modsigMagic...), 0o600)
		}, "unpredictable", true},
		{"initrd carries a handoff", func(e *env) {
			img, _ := appended(t, baseArchive(t))
			os.WriteFile(e.opts.Initrd, img, 0o600)
		}, "handoff-in-initrd", false},
		{"unreadable initrd", func(e *env) { os.WriteFile(e.opts.Initrd, []byte("070701garbage-garbage"), 0o600) }, "initrd-unreadable", true},
		{"kexec disabled", func(e *env) {
			os.WriteFile(filepath.Join(e.opts.Proc, "sys", "kernel", "kexec_load_disabled"), []byte("1\n"), 0o600)
		}, "kexec-disabled", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.mod(e)
			rep, err := e.run(t)
			var re *RefusedError
			if !errors.As(err, &re) || !errors.Is(err, ErrRefused) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			if len(re.Refusals) != 1 || re.Refusals[0].Code != c.code || re.Refusals[0].Forcible != c.forcible || re.Refusals[0].Remedy == "" {
				t.Fatalf("refusals %+v, want one %s", re.Refusals, c.code)
			}
			if e.tr.index("steps.drain") >= 0 || e.tr.index("kexec.load") >= 0 {
				t.Fatalf("refused but went on: %v", e.tr.ev)
			}
			if rep == nil || len(rep.Refusals) != 1 {
				t.Fatalf("report %+v", rep)
			}
			// --force overrides the forcible ones, and the handoff records it.
			e2 := newEnv(t)
			c.mod(e2)
			e2.opts.Force = true
			rep2, err := e2.run(t)
			if !c.forcible {
				if !errors.As(err, &re) {
					t.Fatalf("--force overrode %s: %v", c.code, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("--force: %v", err)
			}
			arch := e2.kx.initrd[rep2.Initrd.ArchiveStart:]
			ih, err := ReadImageHandoff(bytes.NewReader(arch), int64(len(arch)), Limits{})
			if err != nil || len(ih.Handoff.Forced) != 1 || !strings.HasPrefix(ih.Handoff.Forced[0], c.code) {
				t.Fatalf("forced handoff: %v %+v", err, ih)
			}
		})
	}
}

func TestKexecLegacyOnly(t *testing.T) {
	e := newEnv(t)
	e.kx.loadErr = classifyLoadError(unix.ENOSYS)
	_, err := e.run(t)
	if !errors.Is(err, ErrLegacyOnly) || !errors.Is(err, unix.ENOSYS) || !strings.Contains(err.Error(), "never carries") {
		t.Fatalf("err = %v", err)
	}
	if e.tr.index("kexec.reboot") >= 0 {
		t.Fatal("rebooted after a failed load")
	}
	if err := classifyLoadError(unix.EPERM); !errors.Is(err, ErrKexecDisabled) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("EPERM: %v", err)
	}
}

func TestKexecIMAHashSources(t *testing.T) {
	e := newEnv(t)
	e.steps.state.IMAHash = ""
	os.WriteFile(filepath.Join(e.opts.Proc, "cmdline"), []byte("root=/dev/vda ima_hash=sha512\n"), 0o600)
	if _, err := e.run(t); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.kx.cmdline, CmdlineParam+"=sha512:") {
		t.Fatalf("cmdline %q", e.kx.cmdline)
	}
	// The "ima" template's d field is SHA1: both digests travel.
	e = newEnv(t)
	e.steps.state.Templates = []string{"ima", "ima-ng"}
	e.opts.ReuseCmdline, e.opts.Cmdline = false, "console=ttyS0"
	if _, err := e.run(t); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(e.kx.cmdline, "console=ttyS0 "+CmdlineParam+"=sha256:") || !strings.Contains(e.kx.cmdline, ",sha1:") {
		t.Fatalf("cmdline %q", e.kx.cmdline)
	}
}

// TestKexecHashesWindowAlgorithmsOnly: the kernel and the initrd are hashed in the
// algorithms a window record can hold (ima_hash; SHA1 only for a template with the d
// field), and each digest is of the bytes the kernel got.
func TestKexecHashesWindowAlgorithmsOnly(t *testing.T) {
	cases := []struct {
		name      string
		imaHash   string
		templates []string
		want      string // algorithms, in order
	}{
		{"ima-ng", "sha256", []string{"ima-ng", "ima-buf"}, "[sha256]"},
		{"templates unknown", "sha384", nil, "[sha384]"},
		{"ima template", "sha256", []string{"ima", "ima-ng"}, "[sha256 sha1]"},
		{"custom format with d", "sha512", []string{"d|n-ng"}, "[sha512 sha1]"},
		{"ima with sha1", "sha1", []string{"ima"}, "[sha1]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.steps.state.IMAHash, e.steps.state.Templates = c.imaHash, c.templates
			rep, err := e.run(t)
			if err != nil {
				t.Fatal(err)
			}
			var algos, params []string
			for _, a := range windowAlgos(c.imaHash, c.templates) {
				algos = append(algos, a)
				h := supportedIMAHash[a]()
				h.Write(e.kx.kernel)
				if got, want := rep.Kernel.Digests[a], hex.EncodeToString(h.Sum(nil)); got != want {
					t.Errorf("kernel %s = %s, want %s", a, got, want)
				}
				h = supportedIMAHash[a]()
				h.Write(e.kx.initrd)
				params = append(params, a+":"+hex.EncodeToString(h.Sum(nil)))
			}
			if fmt.Sprint(algos) != c.want || len(rep.Kernel.Digests) != len(algos) {
				t.Errorf("algorithms %v, kernel digests %v; want %s", algos, rep.Kernel.Digests, c.want)
			}
			if want := CmdlineParam + "=" + strings.Join(params, ","); !strings.HasSuffix(e.kx.cmdline, " "+want) {
				t.Errorf("cmdline %q, want it to end with %q", e.kx.cmdline, want)
			}
		})
	}
}

func TestKexecNoInitrd(t *testing.T) {
	e := newEnv(t)
	e.opts.Initrd = ""
	if _, err := e.run(t); err != nil {
		t.Fatal(err)
	}
	ih, err := ReadImageHandoff(bytes.NewReader(e.kx.initrd), int64(len(e.kx.initrd)), Limits{})
	if err != nil || ih.Segment != 0 || ih.Handoff.Initrd.ArchiveStart != 0 {
		t.Fatalf("%v %+v", err, ih)
	}
	_ = io.EOF
}

// TestKexecAppendedManifest: the manifest the drain appended to is carried as the flow's
// pre-drain copy joined with the appended bytes only when the copy provably holds the
// prefix (long enough, last line hashing to the drain's prev); a torn last line that the
// drain cut off is dropped from the copy. Otherwise the file is read again after the drain
// and the read is recorded. Either way the carried store equals the disk.
func TestKexecAppendedManifest(t *testing.T) {
	for _, c := range []struct {
		name  string
		mod   func(e *env)
		reads bool
	}{
		{"torn-tail-cut", func(e *env) {
			// A crash left half a line; the copy holds it, the drain cuts it.
			p := filepath.Join(e.opts.Store, "manifest.json")
			os.WriteFile(p, []byte(manifest1+`{"segm`), 0o600)
			fake := e.steps.onDrain
			e.steps.onDrain = func() { os.WriteFile(p, []byte(manifest1), 0o600); fake() }
		}, false},
		{"appended-since-copy", func(e *env) {
			// Another drain appended a line between the flow's copy and the last drain.
			const other = "{\"segments\":\"other\"}\n"
			p := filepath.Join(e.opts.Store, "manifest.json")
			fake := e.steps.onDrain
			e.steps.onDrain = func() {
				os.WriteFile(p, []byte(manifest1+other), 0o600)
				fake()
			}
			e.steps.drained.Store[0].Size = int64(len(manifest1 + other + manifestLine2))
			e.steps.drained.Appended["manifest.json"] = Appended{From: int64(len(manifest1 + other)), Data: []byte(manifestLine2),
				PrevLineSHA256: sha256hex([]byte(strings.TrimSuffix(other, "\n")))}
		}, true},
		{"prev-differs", func(e *env) {
			a := e.steps.drained.Appended["manifest.json"]
			a.PrevLineSHA256 = sha256hex([]byte("another line"))
			e.steps.drained.Appended["manifest.json"] = a
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			c.mod(e)
			if _, err := e.run(t); err != nil {
				t.Fatal(err)
			}
			ih, err := ReadImageHandoff(bytes.NewReader(e.kx.initrd), int64(len(e.kx.initrd)), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, f := range ih.Handoff.Store.Files {
				got[f.Name] = string(f.Data)
			}
			disk := diskStore(t, e.opts.Store)
			if fmt.Sprint(got) != fmt.Sprint(disk) {
				t.Fatalf("carried %q\nwant %q", got, disk)
			}
			r := ih.Handoff.PostDrainReads
			switch {
			case c.reads && (len(r) != 1 || !strings.HasSuffix(r[0].Path, "manifest.json") || r[0].Digest != "sha256:"+sha256hex([]byte(disk["manifest.json"]))):
				t.Fatalf("post-drain reads %+v, want the manifest", r)
			case !c.reads && len(r) != 0:
				t.Fatalf("post-drain reads %+v", r)
			}
		})
	}
}
