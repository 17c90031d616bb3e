package initramfs

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	maxKernelSize = 1 << 30
	maxInitrdSize = int64(4) << 30 // typed: 4 GiB overflows int on 32-bit
)

// copyBufSize is the read size for the kernel and the initrd: few system calls, and the
// hashes see large blocks.
const copyBufSize = 1 << 20

// readKernel opens the kernel image (kept open for kexec_file_load) and hashes it in algos,
// in one pass over the file. When the image has a security.ima naming another algorithm,
// the kernel measures it in that one (ima_get_hash_algo, called by process_measurement
// for every template but "ima", 6.1 to 7.2): the image is hashed in it too, and
// KernelImage.IMAAlgo names it.
func readKernel(o KexecOptions, algos, templates []string) (KernelImage, InputFile, error) {
	o.Trace("open-kernel")
	f, err := o.Open(o.Kernel)
	if err != nil {
		return KernelImage{}, nil, fmt.Errorf("open kernel: %w", err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("kernel %s is not a regular file", o.Kernel)
	}
	if fi.Size() > maxKernelSize {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("kernel %s is %d bytes (limit %d)", o.Kernel, fi.Size(), maxKernelSize)
	}
	fd := int(f.Fd())
	imaXattr := fdXattr(fd, "security.ima")
	fileAlgo := ""
	if x, err := hex.DecodeString(imaXattr); err == nil && len(x) > 0 && !onlyIMATemplate(templates) {
		if a := XattrHashAlgo(x); a != "" && supportedIMAHash[a] != nil {
			fileAlgo = a
			if !slices.Contains(algos, a) {
				algos = append(slices.Clip(algos), a)
			}
		}
	}
	hs := make([]hash.Hash, len(algos))
	ws := make([]io.Writer, 0, len(algos)+1)
	for i, name := range algos {
		hs[i] = supportedIMAHash[name]()
		ws = append(ws, hs[i])
	}
	tail := &tailWriter{max: len(modsigMagic)}
	ws = append(ws, tail)
	// io.LimitReader hides (*os.File).WriteTo, which would ignore the buffer.
	n, err := io.CopyBuffer(io.MultiWriter(ws...), io.LimitReader(f, maxKernelSize+1), make([]byte, copyBufSize))
	if err != nil {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("read kernel: %w", err)
	}
	if n > maxKernelSize {
		f.Close()
		return KernelImage{}, nil, fmt.Errorf("kernel %s is larger than %d bytes", o.Kernel, maxKernelSize)
	}
	k := KernelImage{Path: o.Kernel, Size: n, Digests: make(map[string]string, len(algos)), Mode: uint32(fi.Mode().Perm())}
	for i, name := range algos {
		k.Digests[name] = hex.EncodeToString(hs[i].Sum(nil))
	}
	k.ResolvedPath, _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if k.ResolvedPath == "" {
		k.ResolvedPath, _ = filepath.Abs(o.Kernel)
	}
	if s, ok := fi.Sys().(*syscall.Stat_t); ok {
		k.UID, k.GID, k.Mode = s.Uid, s.Gid, s.Mode
	}
	k.IMAXattr, k.IMAAlgo = imaXattr, fileAlgo
	k.EVMXattr = fdXattr(fd, "security.evm")
	k.AppendedSig = hasModsig(tail.b)
	return k, f, nil
}

type tailWriter struct {
	b   []byte
	max int
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// windowHashers hash the memfd content as it is written, in the window algorithms
// (windowAlgos).
type windowHashers struct {
	names []string
	hs    []hash.Hash
	w     io.Writer
}

func newWindowHashers(algos []string) *windowHashers {
	w := &windowHashers{names: algos}
	ws := make([]io.Writer, len(algos))
	for i, name := range algos {
		h := supportedIMAHash[name]()
		w.hs = append(w.hs, h)
		ws[i] = h
	}
	w.w = io.MultiWriter(ws...)
	return w
}

func (w *windowHashers) Write(p []byte) (int, error) { return w.w.Write(p) }

// base returns the digests so far (of the base initrd, before the archive).
func (w *windowHashers) base() map[string]string {
	m := map[string]string{}
	for i, h := range w.hs {
		m[w.names[i]] = hex.EncodeToString(h.Sum(nil))
	}
	return m
}

// param returns "<algo>:<hex>[,<algo>:<hex>]" of everything written.
func (w *windowHashers) param() string {
	var parts []string
	for i, h := range w.hs {
		parts = append(parts, w.names[i]+":"+hex.EncodeToString(h.Sum(nil)))
	}
	return strings.Join(parts, ",")
}

func createMemfd() (*os.File, error) {
	fd, err := unix.MemfdCreate(MemfdName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	return os.NewFile(uintptr(fd), "memfd:"+MemfdName), nil
}

func sealMemfd(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
	if err != nil {
		return fmt.Errorf("seal memfd: %w", err)
	}
	return nil
}

// readInitrd copies the base initrd into the memfd (or only hashes it in a dry run) in one
// pass that also hashes it, and checks that it carries no handoff already.
//
// The check reads the copy in the memfd (what is loaded), not the file again: headers
// only for plain newc segments (Walk skips file data by offset), the decompressed stream
// for gzip and zstd segments, whose names cannot be known otherwise.
func readInitrd(o KexecOptions, memfd *os.File, hashes *windowHashers, refusals *[]Refusal, warnings *[]string) (int64, string, []string, error) {
	o.Trace("open-initrd")
	f, err := o.Open(o.Initrd)
	if err != nil {
		return 0, "", nil, fmt.Errorf("open initrd: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0, "", nil, fmt.Errorf("initrd %s is not a regular file", o.Initrd)
	}
	if fi.Size() > maxInitrdSize {
		return 0, "", nil, fmt.Errorf("initrd %s is %d bytes (limit %d)", o.Initrd, fi.Size(), int64(maxInitrdSize))
	}
	resolved, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	dst := io.Writer(hashes)
	if memfd != nil {
		dst = io.MultiWriter(memfd, hashes)
	}
	n, err := io.CopyBuffer(dst, io.LimitReader(f, maxInitrdSize+1), make([]byte, copyBufSize))
	if err != nil {
		return 0, "", nil, fmt.Errorf("read initrd: %w", err)
	}
	if n > maxInitrdSize {
		return 0, "", nil, fmt.Errorf("initrd %s is larger than %d bytes", o.Initrd, int64(maxInitrdSize))
	}
	o.Trace("check-initrd")
	var ra io.ReaderAt = f
	if memfd != nil {
		ra = memfd
	}
	var segs []string
	found := ""
	walked, werr := Walk(ra, n, o.Limits, func(e *Entry, _ io.Reader) error {
		name := path.Clean(strings.TrimPrefix(e.Name, "/"))
		if found == "" && (name == HandoffDir || strings.HasPrefix(name, HandoffDir+"/")) {
			found = e.Name
		}
		return nil
	})
	for _, s := range walked {
		c := s.Compression
		if c == "" {
			c = "plain"
		}
		segs = append(segs, c)
	}
	switch {
	case found != "":
		*refusals = append(*refusals, Refusal{Code: "handoff-in-initrd",
			Reason: fmt.Sprintf("the initrd %s already holds %q (a handoff from an earlier kexec?); it would mix with this one when the kernel unpacks", o.Initrd, found),
			Remedy: "pass the distribution's initrd, not one imakexec produced", Forcible: false})
	case errors.Is(werr, ErrUnsupportedCompression):
		*warnings = append(*warnings, fmt.Sprintf("initrd %s not fully checked for an earlier handoff: %v", o.Initrd, werr))
	case werr != nil:
		*refusals = append(*refusals, Refusal{Code: "initrd-unreadable",
			Reason: fmt.Sprintf("initrd %s: %v", o.Initrd, werr),
			Remedy: "check the initrd; --force loads it anyway (the kernel may be more lenient)", Forcible: true})
	}
	return n, resolved, segs, nil
}
