package initramfs

import (
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// BuildOptions describe an initramfs with imakexec as its boot hook.
type BuildOptions struct {
	// Self is the imakexec executable to put in the image; default /proc/self/exe (so no
	// Go toolchain is needed at run time).
	Self string
	// Init is a prebuilt u-root init (github.com/u-root/u-root/cmds/core/init). With it, the
	// image has /init = u-root's init and /bin/uinit = imakexec; u-root's init runs uinit,
	// then /bin/defaultsh or /bin/sh if the image has one. Without it, imakexec is /init.
	Init string
	// Files are extra files, "SRC:DST" with DST relative to the image root (e.g. a kernel
	// image "boot/vmlinuz" for a later kexec, or a shell "bin/sh").
	Files []string
	// HookArgs are written to HookFlagsFile: the hook's flags in the image
	// (e.g. --store, --next).
	HookArgs []string
}

// maxBuildFile bounds a single file put into an image.
const maxBuildFile = 2 << 30

// BuildInitramfs writes a newc initramfs (uncompressed; purgatory hashes it, and
// compression costs boot time under QEMU TCG) to w.
func BuildInitramfs(w io.Writer, o BuildOptions) error {
	if o.Self == "" {
		o.Self = "/proc/self/exe"
	}
	type file struct {
		src  string
		data []byte
		mode uint64
	}
	files := map[string]file{}
	add := func(dst string, f file) error {
		dst = strings.TrimPrefix(path.Clean("/"+dst), "/")
		if dst == "" || dst == "." {
			return fmt.Errorf("bad destination %q", dst)
		}
		if _, dup := files[dst]; dup {
			return fmt.Errorf("%s given twice", dst)
		}
		files[dst] = f
		return nil
	}
	if o.Init != "" {
		if err := add("init", file{src: o.Init, mode: 0o755}); err != nil {
			return err
		}
		if err := add("bin/uinit", file{src: o.Self, mode: 0o755}); err != nil {
			return err
		}
	} else if err := add("init", file{src: o.Self, mode: 0o755}); err != nil {
		return err
	}
	for _, spec := range o.Files {
		src, dst, ok := strings.Cut(spec, ":")
		if !ok || src == "" || dst == "" {
			return fmt.Errorf("file %q: want SRC:DST", spec)
		}
		// Keep an executable source executable (a shell "bin/sh", a program for --next).
		mode := uint64(0o644)
		if fi, err := os.Stat(src); err == nil && fi.Mode()&0o111 != 0 {
			mode = 0o755
		}
		if err := add(dst, file{src: src, mode: mode}); err != nil {
			return err
		}
	}
	var flags strings.Builder
	flags.WriteString("# flags of the imakexec boot hook (imakexec hook --help)\n")
	for _, a := range o.HookArgs {
		flags.WriteString(a + "\n")
	}
	if err := add(HookFlagsFile, file{data: []byte(flags.String()), mode: 0o644}); err != nil {
		return err
	}

	// Directories first: the kernel does not create parents.
	dirs := map[string]bool{"dev": true, "proc": true, "sys": true, "tmp": true, "run": true, "etc": true, "bin": true}
	for dst := range files {
		for d := path.Dir(dst); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var dirNames []string
	for d := range dirs {
		dirNames = append(dirNames, d)
	}
	sort.Strings(dirNames) // parents sort before children
	var recs []cpio.Record
	ino := uint64(0)
	for _, d := range dirNames {
		ino++
		mode := uint64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		recs = append(recs, cpio.Record{Info: cpio.Info{Name: d, Mode: cpio.S_IFDIR | mode, NLink: 2, Ino: ino}})
	}
	ino++
	recs = append(recs, cpio.Record{Info: cpio.Info{Name: "dev/console", Mode: cpio.S_IFCHR | 0o600, Rmajor: 5, Rminor: 1, NLink: 1, Ino: ino}})
	ino++
	recs = append(recs, cpio.Record{Info: cpio.Info{Name: "dev/null", Mode: cpio.S_IFCHR | 0o666, Rmajor: 1, Rminor: 3, NLink: 1, Ino: ino}})
	var names []string
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := files[n]
		data := f.data
		if f.src != "" {
			b, err := readBuildFile(f.src)
			if err != nil {
				return err
			}
			data = b
		}
		ino++
		recs = append(recs, cpio.StaticRecord(data, cpio.Info{Name: n, Mode: cpio.S_IFREG | f.mode, NLink: 1, Ino: ino}))
	}
	return writeAll(cpio.Newc.Writer(w), recs)
}

// readBuildFile reads a file for the image. Unlike store files it may be reached through
// a symlink (/boot/vmlinuz is one on Debian): it is the operator's own input.
func readBuildFile(name string) ([]byte, error) { return readRegularFile(name, maxBuildFile, true) }
