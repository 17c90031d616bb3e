package view

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/imakexec/imakexec/handover"
)

// The view as a read-only FUSE file system laid out as the kernel's IMA directory (ima_fs.c,
// 6.10+): ascii_runtime_measurements_<bank> and binary_runtime_measurements_<bank> for every
// bank, the legacy names as symlinks to the _sha1 files (7.2), and
// runtime_measurements_count. Files are 0440 root, opened with direct I/O (every read
// reaches the view, as every read of securityfs reaches the kernel) and report size 0, as
// securityfs does.

// Server is a mounted view.
type Server struct {
	srv  *fuse.Server
	dir  string
	once sync.Mutex
	done bool
}

// MountOptions tune the mount.
type MountOptions struct {
	Debug bool
	// AllowOther lets processes of other users read (with the files' 0440 root:GID modes
	// checked by the kernel): an agent that opened the file as root and then dropped its
	// privileges keeps reading through FUSE only with it.
	AllowOther bool
	// GID owns the files (default 0).
	GID uint32
}

// Mount serves v at dir (an existing directory).
func Mount(dir string, v *View, o *MountOptions) (*Server, error) {
	if o == nil {
		o = &MountOptions{}
	}
	zero := time.Duration(0)
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			AllowOther:    o.AllowOther,
			FsName:        "imakexec",
			Name:          "imakexec-view",
			DirectMount:   true,
			DisableXAttrs: true,
			Debug:         o.Debug,
			// The kernel checks the files' modes (0440); the mount is read-only.
			Options:          []string{"default_permissions"},
			DirectMountFlags: syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC,
			// Reads of up to 1 MiB (max_pages); a reply must fit the 1 MiB splice pipe.
			MaxWrite: 1<<20 - 8<<10,
		},
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
	}
	srv, err := fs.Mount(dir, &root{v: v, gid: o.GID}, opts)
	if err != nil {
		return nil, fmt.Errorf("mount view at %s: %w", dir, err)
	}
	return &Server{srv: srv, dir: dir}, nil
}

// Dir is the mount point.
func (s *Server) Dir() string { return s.dir }

// Wait waits until the file system is unmounted.
func (s *Server) Wait() { s.srv.Wait() }

// Unmount unmounts; with files still open it detaches the mount (MNT_DETACH), so the
// readers' descriptors keep working until they close them.
func (s *Server) Unmount() error {
	s.once.Lock()
	defer s.once.Unlock()
	if s.done {
		return nil
	}
	err := s.srv.Unmount()
	if err != nil {
		if derr := syscall.Unmount(s.dir, syscall.MNT_DETACH); derr != nil {
			return fmt.Errorf("unmount %s: %w (detach: %v)", s.dir, err, derr)
		}
		err = nil
	}
	s.done = true
	return err
}

const countName = "runtime_measurements_count"

type root struct {
	fs.Inode
	v   *View
	gid uint32
}

var (
	_ fs.NodeLookuper  = (*root)(nil)
	_ fs.NodeReaddirer = (*root)(nil)
	_ fs.NodeGetattrer = (*root)(nil)
)

func (r *root) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

func inoOf(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64() | 1<<62
}

// entries are the directory's names: files and the two legacy symlinks.
func (r *root) entries() []fuse.DirEntry {
	var es []fuse.DirEntry
	for _, f := range r.v.Formats() {
		es = append(es, fuse.DirEntry{Name: f.Name(), Mode: syscall.S_IFREG, Ino: inoOf(f.Name())})
	}
	es = append(es,
		fuse.DirEntry{Name: "ascii_runtime_measurements", Mode: syscall.S_IFLNK, Ino: inoOf("ascii_runtime_measurements")},
		fuse.DirEntry{Name: "binary_runtime_measurements", Mode: syscall.S_IFLNK, Ino: inoOf("binary_runtime_measurements")},
		fuse.DirEntry{Name: countName, Mode: syscall.S_IFREG, Ino: inoOf(countName)})
	return es
}

func (r *root) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream(r.entries()), 0
}

func (r *root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	switch name {
	case "ascii_runtime_measurements", "binary_runtime_measurements":
		out.Mode = syscall.S_IFLNK | 0o777
		return r.NewInode(ctx, &fs.MemSymlink{Data: []byte(name + "_sha1")}, fs.StableAttr{Mode: syscall.S_IFLNK, Ino: inoOf(name)}), 0
	case countName:
		n := &countFile{viewNode{v: r.v, gid: r.gid}}
		n.attr(&out.Attr)
		return r.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: inoOf(name)}), 0
	}
	f, ok := ParseName(name)
	if !ok {
		return nil, syscall.ENOENT
	}
	found := false
	for _, g := range r.v.Formats() {
		if g.Name() == f.Name() && g.Name() == name {
			found = true
		}
	}
	if !found {
		return nil, syscall.ENOENT
	}
	n := &listFile{viewNode: viewNode{v: r.v, gid: r.gid}, f: f}
	n.attr(&out.Attr)
	return r.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: inoOf(name)}), 0
}

func fileAttr(a *fuse.Attr, gid uint32) {
	a.Mode = syscall.S_IFREG | 0o440
	a.Size = 0
	a.Nlink = 1
	a.Gid = gid
}

func readOnly(flags uint32) syscall.Errno {
	if acc := flags & syscall.O_ACCMODE; acc != syscall.O_RDONLY {
		return syscall.EROFS
	}
	return 0
}

// viewNode is what the view's files share: the view, the group that may read them, and
// their attributes (fileAttr).
type viewNode struct {
	fs.Inode
	v   *View
	gid uint32
}

func (n *viewNode) attr(a *fuse.Attr) { fileAttr(a, n.gid) }

func (n *viewNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

// listFile is one list file.
type listFile struct {
	viewNode
	f Format
}

var (
	_ fs.NodeOpener    = (*listFile)(nil)
	_ fs.NodeGetattrer = (*listFile)(nil)
)

func (n *listFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if e := readOnly(flags); e != 0 {
		return nil, 0, e
	}
	return &listHandle{r: n.v.Open(n.f), v: n.v}, fuse.FOPEN_DIRECT_IO, 0
}

type listHandle struct {
	r *Reader
	v *View
}

var (
	_ fs.FileReader   = (*listHandle)(nil)
	_ fs.FileReleaser = (*listHandle)(nil)
)

func (h *listHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.r.ReadAt(ctx, dest, off)
	if err != nil {
		return nil, h.v.errno("read "+h.r.f.Name(), err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *listHandle) Release(ctx context.Context) syscall.Errno {
	h.r.Close()
	return 0
}

// errno maps a view error to what a securityfs reader would see, and logs it.
func (v *View) errno(what string, err error) syscall.Errno {
	switch {
	case errors.Is(err, ErrStale):
		return syscall.ESTALE
	case errors.Is(err, handover.ErrBusy):
		v.logf("view: %s: %v", what, err)
		return syscall.EBUSY
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	v.logf("view: %s: %v", what, err)
	return syscall.EIO
}

// countFile is runtime_measurements_count: the records of the view, "%li\n" as
// ima_show_counter prints it, read anew at every read.
type countFile struct {
	viewNode
}

var (
	_ fs.NodeOpener    = (*countFile)(nil)
	_ fs.NodeGetattrer = (*countFile)(nil)
)

func (n *countFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if e := readOnly(flags); e != 0 {
		return nil, 0, e
	}
	return &countHandle{v: n.v}, fuse.FOPEN_DIRECT_IO, 0
}

type countHandle struct{ v *View }

var _ fs.FileReader = (*countHandle)(nil)

func (h *countHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	c, err := h.v.Count(ctx)
	if err != nil {
		return nil, h.v.errno("read "+countName, err)
	}
	s := strconv.FormatUint(c, 10) + "\n"
	if off >= int64(len(s)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData([]byte(s[off:])), 0
}
