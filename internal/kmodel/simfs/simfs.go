// Package simfs serves a kmodel kernel as the kernel's securityfs tree over FUSE: the
// mount directory plays /sys/kernel/security, with integrity/ima/ and the `ima` symlink
// beside it. Every open, read, write and close goes to the model, so production code that
// reads securityfs runs against it unchanged.
//
// Approximations of FUSE: the caller's uid 0 stands for CAP_SYS_ADMIN and
// CAP_DAC_OVERRIDE; only the primary gid is known (no supplementary groups). The kernel
// records the 7.2 writer per thread: FUSE passes the calling thread's id with open, so
// that part is exact; release is asynchronous in FUSE, so the thread that closes a file is
// taken from the last flush (sent synchronously by close(2)), falling back to the opener.
// Files are opened with direct I/O (no page cache), so each read reaches the model.
package simfs

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// Server is a mounted tree.
type Server struct {
	srv  *fuse.Server
	dir  string
	once sync.Once
	err  error
}

// Options tune the mount.
type Options struct {
	Debug bool // log FUSE traffic
}

// Mount serves k at dir (an existing empty directory). Unmount when done.
func Mount(dir string, k *kmodel.Kernel, o *Options) (*Server, error) {
	if o == nil {
		o = &Options{}
	}
	zero := time.Duration(0)
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:    true,
			FsName:        "securityfs",
			Name:          "kmodel",
			DirectMount:   true,
			DisableXAttrs: true,
			Debug:         o.Debug,
			// MaxWrite also sets max_pages, the bound of every READ request: ~1 MiB reads
			// of the lists cost a fraction of the round trips of 128 KiB ones. A reply
			// (data and header) must fit the 1 MiB pipe go-fuse splices through.
			MaxWrite: 1<<20 - 8<<10,
		},
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		NullPermissions: true,
	}
	srv, err := fs.Mount(dir, &root{k: k}, opts)
	if err != nil {
		return nil, fmt.Errorf("mount kernel model at %s: %w", dir, err)
	}
	return &Server{srv: srv, dir: dir}, nil
}

// Dir is the mount point.
func (s *Server) Dir() string { return s.dir }

// Unmount unmounts and waits for the server to stop. It is safe to call twice.
func (s *Server) Unmount() error {
	s.once.Do(func() {
		var st syscall.Stat_t
		statErr := syscall.Stat(s.dir, &st)
		s.err = s.srv.Unmount()
		if s.err != nil && statErr == nil {
			// Files are still open (e.g. a failed test's descriptors). Abort the FUSE
			// connection, so that closing them later fails at once instead of waiting
			// for this server (a process exiting with such a descriptor would otherwise
			// hang on its own mount), then detach the mount.
			abortConnection(uint32(st.Dev&0xff | (st.Dev>>12)&^0xff))
			if err := syscall.Unmount(s.dir, syscall.MNT_DETACH); err == nil {
				s.err = nil
			}
		}
		if s.err == nil {
			s.srv.Wait()
		}
	})
	return s.err
}

type root struct {
	fs.Inode
	k *kmodel.Kernel
}

var _ fs.NodeOnAdder = (*root)(nil)

func (r *root) OnAdd(ctx context.Context) {
	integ := r.NewPersistentInode(ctx, &dir{}, fs.StableAttr{Mode: syscall.S_IFDIR})
	r.AddChild("integrity", integ, false)
	ima := r.NewPersistentInode(ctx, &imaDir{k: r.k}, fs.StableAttr{Mode: syscall.S_IFDIR})
	integ.AddChild("ima", ima, false)
	link := r.NewPersistentInode(ctx, &fs.MemSymlink{Data: []byte("integrity/ima")}, fs.StableAttr{Mode: syscall.S_IFLNK})
	r.AddChild("ima", link, false)
}

func (r *root) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

type dir struct{ fs.Inode }

func (d *dir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

// imaDir is integrity/ima/: its entries follow the running kernel's profile.
type imaDir struct {
	fs.Inode
	k *kmodel.Kernel
}

var (
	_ fs.NodeLookuper  = (*imaDir)(nil)
	_ fs.NodeReaddirer = (*imaDir)(nil)
	_ fs.NodeGetattrer = (*imaDir)(nil)
)

func (d *imaDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

func ino(spec kmodel.FileSpec) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d", spec.Name, spec.Kind)
	return h.Sum64() | 1<<62
}

func (d *imaDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	spec, ok := d.k.Lookup(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	if spec.Kind == kmodel.KindSymlink {
		out.Mode = syscall.S_IFLNK | 0o777
		return d.NewInode(ctx, &fs.MemSymlink{Data: []byte(spec.Target)}, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: ino(spec)}), 0
	}
	n := &imaFile{k: d.k, spec: spec}
	n.attr(&out.Attr)
	return d.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(spec)}), 0
}

func (d *imaDir) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	var es []fuse.DirEntry
	for _, f := range d.k.Files() {
		m := uint32(syscall.S_IFREG)
		if f.Kind == kmodel.KindSymlink {
			m = syscall.S_IFLNK
		}
		es = append(es, fuse.DirEntry{Name: f.Name, Mode: m, Ino: ino(f)})
	}
	return fs.NewListDirStream(es), 0
}

// imaFile is one file of integrity/ima/.
type imaFile struct {
	fs.Inode
	k    *kmodel.Kernel
	spec kmodel.FileSpec
}

var (
	_ fs.NodeOpener    = (*imaFile)(nil)
	_ fs.NodeGetattrer = (*imaFile)(nil)
	_ fs.NodeSetattrer = (*imaFile)(nil)
)

func (f *imaFile) attr(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | f.spec.Mode
	a.Size = 0
	a.Nlink = 1
}

func (f *imaFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	return 0
}

// Setattr accepts the truncation that open(O_TRUNC) sends (securityfs files take
// simple_setattr) and changes nothing.
func (f *imaFile) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f.attr(&out.Attr)
	return 0
}

func cred(ctx context.Context) kmodel.Cred {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return kmodel.Cred{}
	}
	return kmodel.Cred{UID: c.Uid, GID: c.Gid, TID: int(c.Pid)}
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := err.(syscall.Errno); ok {
		return e
	}
	return syscall.EIO
}

func (f *imaFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	c := cred(ctx)
	acc := flags & syscall.O_ACCMODE
	write := acc == syscall.O_WRONLY || acc == syscall.O_RDWR
	read := acc == syscall.O_RDONLY || acc == syscall.O_RDWR
	h, err := f.k.Open(f.spec, write, read, c)
	if err != nil {
		return nil, 0, errno(err)
	}
	return &handle{h: h, closer: c.TID, opener: c.TID}, fuse.FOPEN_DIRECT_IO, 0
}

// handle adapts a kmodel.Handle to go-fuse.
type handle struct {
	h      *kmodel.Handle
	mu     sync.Mutex
	closer int
	opener int
}

var (
	_ fs.FileReader   = (*handle)(nil)
	_ fs.FileWriter   = (*handle)(nil)
	_ fs.FileFlusher  = (*handle)(nil)
	_ fs.FileReleaser = (*handle)(nil)
)

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, err := h.h.Read(dest, off)
	if err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n, err := h.h.Write(data)
	if err != nil {
		return 0, errno(err)
	}
	return uint32(n), 0
}

// Flush is sent synchronously by close(2), while FUSE's release comes later and
// asynchronously; a close() that returned before the model saw it would leave the 7.2
// reader/writer counter taken (EBUSY for the caller's next open), unlike the kernel, where
// the release has run when close() returns. So a flush from the opening process counts as
// the final close. (A flush from another process, e.g. a forked child closing an
// inherited descriptor, does not; a dup'ed descriptor closed first does, too early.)
func (h *handle) Flush(ctx context.Context) syscall.Errno {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closer = int(c.Pid)
	if h.opener != 0 && tgid(int(c.Pid)) == tgid(h.opener) {
		h.h.Release(int(c.Pid))
	}
	return 0
}

// tgid returns the process of a thread (from /proc), or the thread id itself.
func tgid(tid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return tid
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				return n
			}
		}
	}
	return tid
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	tid := h.closer
	h.mu.Unlock()
	h.h.Release(tid)
	return 0
}

// abortConnection aborts FUSE connection minor through the fusectl file system, mounting
// it if needed.
func abortConnection(minor uint32) {
	const ctl = "/sys/fs/fuse/connections"
	name := ctl + "/" + strconv.FormatUint(uint64(minor), 10) + "/abort"
	if _, err := os.Stat(name); err != nil {
		syscall.Mount("none", ctl, "fusectl", 0, "")
	}
	os.WriteFile(name, []byte("1"), 0)
}
