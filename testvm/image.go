package testvm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// Image describes a guest initramfs: one static Go program as /init, more Go
// programs, host files and literal data. No u-root init, no shell: the guest
// program mounts what it needs itself (testvm/guestlib). Building one takes
// about 0.6 s with a warm Go build cache.
type Image struct {
	// Init is the import path of the Go main package that becomes /init.
	Init string
	// Programs maps archive paths ("bin/hello") to Go main packages.
	Programs map[string]string
	// Files maps archive paths to host files. A host file with any execute
	// bit becomes 0755, others 0644.
	Files map[string]string
	// Data maps archive paths to contents (mode 0644).
	Data map[string][]byte
}

// baseDirs exist in every image: mount points for guestlib.DefaultMounts.
var baseDirs = []string{"dev", "proc", "sys", "tmp"}

// GoBuild builds a Go main package for the guest: static (CGO_ENABLED=0),
// linux/amd64 with GOAMD64=v1 (QEMU's CPU models need not support more),
// -trimpath -ldflags="-s -w". It runs in the repository root, so pkg may be
// any package of the module or its dependencies.
func GoBuild(ctx context.Context, pkg, out string) error {
	root, err := RepoRoot()
	if err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	goBin := "go"
	if gr := os.Getenv("GOROOT"); gr != "" {
		if p := filepath.Join(gr, "bin", "go"); fileExists(p) {
			goBin = p
		}
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// Build compiles the programs and writes the initramfs (an uncompressed newc
// cpio: purgatory hashes every kexec segment slowly under TCG, so images
// stay small and uncompressed) to out.
func (im *Image) Build(ctx context.Context, out string) error {
	if im.Init == "" {
		return fmt.Errorf("build image: Image.Init is empty")
	}
	work, err := os.MkdirTemp("", "testvm-build")
	if err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	defer os.RemoveAll(work)

	type entry struct {
		host string // host file, or ""
		data []byte
		mode uint64
	}
	entries := map[string]entry{}
	add := func(name string, e entry) error {
		n, err := archiveName(name)
		if err != nil {
			return fmt.Errorf("build image: %w", err)
		}
		if _, dup := entries[n]; dup {
			return fmt.Errorf("build image: %q given twice", n)
		}
		entries[n] = e
		return nil
	}
	programs := map[string]string{"init": im.Init}
	for name, pkg := range im.Programs {
		programs[name] = pkg
	}
	for i, name := range slices.Sorted(maps.Keys(programs)) {
		bin := filepath.Join(work, fmt.Sprintf("prog%d", i))
		if err := GoBuild(ctx, programs[name], bin); err != nil {
			return fmt.Errorf("build image: %w", err)
		}
		if err := add(name, entry{host: bin, mode: 0o755}); err != nil {
			return err
		}
	}
	for name, host := range im.Files {
		st, err := os.Stat(host)
		if err != nil {
			return fmt.Errorf("build image: %w", err)
		}
		mode := uint64(0o644)
		if st.Mode()&0o111 != 0 {
			mode = 0o755
		}
		if err := add(name, entry{host: host, mode: mode}); err != nil {
			return err
		}
	}
	for name, data := range im.Data {
		if err := add(name, entry{data: data, mode: 0o644}); err != nil {
			return err
		}
	}

	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	defer f.Close()
	w := cpio.Newc.Writer(f)
	dirs := map[string]bool{}
	mkdirs := func(dir string) error {
		var chain []string
		for d := dir; d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			chain = append(chain, d)
		}
		for _, d := range slices.Backward(chain) {
			dirs[d] = true
			if err := w.WriteRecord(cpio.Directory(d, 0o755)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range baseDirs {
		if err := mkdirs(d); err != nil {
			return fmt.Errorf("build image: %w", err)
		}
	}
	// Without dev/console the kernel starts /init with no fds 0-2.
	if err := w.WriteRecord(cpio.CharDev("dev/console", 0o600, 5, 1)); err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		e := entries[name]
		if err := mkdirs(path.Dir(name)); err != nil {
			return fmt.Errorf("build image: %w", err)
		}
		var rec cpio.Record
		if e.host != "" {
			hf, err := os.Open(e.host)
			if err != nil {
				return fmt.Errorf("build image: %w", err)
			}
			defer hf.Close()
			st, err := hf.Stat()
			if err != nil {
				return fmt.Errorf("build image: %w", err)
			}
			rec = cpio.Record{ReaderAt: hf, Info: cpio.Info{Name: name, Mode: cpio.S_IFREG | e.mode, FileSize: uint64(st.Size())}}
		} else {
			rec = cpio.StaticRecord(e.data, cpio.Info{Name: name, Mode: cpio.S_IFREG | e.mode})
		}
		rec.NLink = 1
		if err := w.WriteRecord(rec); err != nil {
			return fmt.Errorf("build image: write %s: %w", name, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("build image: %w", err)
	}
	return nil
}

// archiveName normalizes an archive path ("/etc/x" -> "etc/x") and refuses
// paths that leave the archive root.
func archiveName(name string) (string, error) {
	n := strings.TrimPrefix(name, "/")
	if n == "" || path.Clean(n) != n || n == ".." || strings.HasPrefix(n, "../") {
		return "", fmt.Errorf("bad archive path %q", name)
	}
	return n, nil
}

// The per-test-binary image cache: equal Images are built once.
var images struct {
	sync.Mutex
	dir   string
	built map[string]*cachedImage
}

type cachedImage struct {
	once sync.Once
	path string
	err  error
}

// key identifies an Image; host files count with their size and mtime.
func (im *Image) key() (string, error) {
	type file struct {
		Path        string
		Size, MTime int64
	}
	k := struct {
		Image *Image
		Files map[string]file
	}{im, map[string]file{}}
	for name, host := range im.Files {
		st, err := os.Stat(host)
		if err != nil {
			return "", err
		}
		k.Files[name] = file{host, st.Size(), st.ModTime().UnixNano()}
	}
	b, err := json.Marshal(k)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// BuildImage returns the path of im built as an initramfs, building it on
// first use in this process. Images live in a temporary directory that Main
// (or CleanupImages) removes.
func BuildImage(ctx context.Context, im *Image) (string, error) {
	key, err := im.key()
	if err != nil {
		return "", fmt.Errorf("build image: %w", err)
	}
	images.Lock()
	if images.built == nil {
		images.built = map[string]*cachedImage{}
	}
	if images.dir == "" {
		if images.dir, err = os.MkdirTemp("", "testvm-images"); err != nil {
			images.Unlock()
			return "", fmt.Errorf("build image: %w", err)
		}
	}
	c := images.built[key]
	if c == nil {
		c = &cachedImage{path: filepath.Join(images.dir, key+".cpio")}
		images.built[key] = c
	}
	images.Unlock()
	c.once.Do(func() { c.err = im.Build(ctx, c.path) })
	return c.path, c.err
}

// ImageT is BuildImage for tests: it fails the test on error.
func ImageT(t testing.TB, im *Image) string {
	t.Helper()
	p, err := BuildImage(context.Background(), im)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// CleanupImages removes the images BuildImage made.
func CleanupImages() {
	images.Lock()
	defer images.Unlock()
	if images.dir != "" {
		os.RemoveAll(images.dir)
	}
	images.dir, images.built = "", nil
}

// Main runs the tests and removes the cached images; call it from TestMain:
//
//	func TestMain(m *testing.M) { testvm.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	CleanupImages()
	os.Exit(code)
}

// ReadInitramfsNames lists the names in a newc archive (the first archive
// only). It is a test aid for images this package built, not a parser for
// untrusted input.
func ReadInitramfsNames(r io.ReaderAt) ([]string, error) {
	var names []string
	err := cpio.ForEachRecord(cpio.Newc.Reader(r), func(rec cpio.Record) error {
		names = append(names, rec.Name)
		return nil
	})
	return names, err
}
