package initramfs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/internal/storefs"
)

// Handoff layout inside the appended archive, and therefore in the next kernel's rootfs
// once the kernel has unpacked it (the names are relative to the archive root, i.e. to "/").
const (
	HandoffDir      = "imakexec"              // top directory of the handoff
	HandoffJSONName = "imakexec/handoff.json" // metadata, format below
	HandoffStoreDir = "imakexec/store"        // the handoff store's files, flat
	HandoffFormat   = "imakexec-handoff"      // Handoff.Format
	HandoffVersion  = 1                       // Handoff.Version
	CmdlineParam    = "imakexec.initrd"       // command-line parameter carrying the initrd digest(s)
	MemfdName       = "imakexec-initrd"       // name given to memfd_create for the initrd
	maxHandoffJSON  = 1 << 20                 // bytes
	maxStoreFiles   = 1 << 16                 // files in the carried store
	defaultMaxStore = int64(1) << 30          // bytes of carried store files in total
	maxStoreDepth   = 4
	storeNameMax    = 255      // one path element
	handoffJSONPerm = 0o600    // mode of handoff.json in the archive
	handoffDirPerm  = 0o700    // mode of imakexec/ and imakexec/store/
	storeFilePerm   = 0o600    // mode of store files in the archive
	xattrMax        = 64 << 10 // bytes of one security.* value kept
)

// Handoff is the metadata that travels next to the store (imakexec/handoff.json, a JSON
// object). It tells rejoin what the old kernel was and exactly what was handed to
// kexec_file_load, so that the records measured in the kexec window (after the last drain)
// can be rebuilt and then proven against the TPM. It is untrusted input in the next kernel:
// nothing in it is believed until the replay matches the TPM.
//
// Version 1 fields. Digests are lower-case hex; algorithm names are the kernel's
// (hash_algo_name: "sha1", "sha256", "sha384", "sha512").
type Handoff struct {
	Format  string `json:"format"`  // HandoffFormat
	Version int    `json:"version"` // HandoffVersion; readers refuse other versions
	Created string `json:"created"` // RFC 3339, informative only

	OldKernel OldKernel   `json:"old_kernel"`
	Kernel    KernelImage `json:"kernel"`
	Initrd    InitrdImage `json:"initrd"`
	Cmdline   Cmdline     `json:"cmdline"`
	Drain     DrainInfo   `json:"drain"`
	Store     StoreInfo   `json:"store"`
	// PostDrainReads are files opened for reading after the last drain, in open order: each
	// may be a FILE_CHECK record the old log ends with. Empty in the normal flow.
	PostDrainReads []FileRead `json:"post_drain_reads,omitempty"`
	// LoadOnly is true when imakexec only loaded and another tool executed the jump: more
	// records may have been measured between load and jump (shutdown), and only a kernel
	// that copies the list at execute (6.16+, CONFIG_IMA_KEXEC) carries them.
	LoadOnly bool `json:"load_only,omitempty"`
	// Forced lists the refusals that --force overrode.
	Forced []string `json:"forced,omitempty"`
	// DiskStore lists the store files left on a persistent filesystem instead of being
	// carried (KexecOptions.StoreOnDisk): the first Size bytes of each hash to SHA256 (the
	// manifest only grows). Rejoin names a store on disk that disagrees.
	DiskStore *StoreInfo `json:"disk_store,omitempty"`
}

// OldKernel is the kernel that ran kexec_file_load.
type OldKernel struct {
	Release string `json:"release,omitempty"` // /proc/sys/kernel/osrelease
	BootID  string `json:"boot_id,omitempty"` // /proc/sys/kernel/random/boot_id
	// IMAHash is the ima_hash algorithm: the one of d-ng file digests, hence of the
	// kexec-window initrd and kernel records. IMAHashSource says how it was found:
	// "log" (from the records), "cmdline" (ima_hash=), "flag", or "assumed" (sha256).
	IMAHash       string   `json:"ima_hash"`
	IMAHashSource string   `json:"ima_hash_source"`
	IMAHashFrom   string   `json:"ima_hash_from,omitempty"`  // with "log": which records showed it
	Templates     []string `json:"templates,omitempty"`      // template names (or formats) seen in the log
	Banks         []string `json:"banks,omitempty"`          // PCR banks
	IMAKexec      string   `json:"ima_kexec,omitempty"`      // "yes", "no" or "" (unknown): kernel carries the list
	IMAKexecFrom  string   `json:"ima_kexec_from,omitempty"` // how IMAKexec is known
	// MeasuresKexec says whether the policy measures a kexec function (KEXEC_KERNEL_CHECK,
	// KEXEC_INITRAMFS_CHECK, KEXEC_CMDLINE); nil when the policy could not be read.
	MeasuresKexec *bool `json:"measures_kexec,omitempty"`
}

// KernelImage is the kernel image given to kexec_file_load, as opened before the last drain.
type KernelImage struct {
	Path         string            `json:"path"`          // as given
	ResolvedPath string            `json:"resolved_path"` // readlink /proc/self/fd/N at open: the name IMA records
	Size         int64             `json:"size"`
	Digests      map[string]string `json:"digests"`             // algorithm -> hex: ima_hash, and sha1 when a template has the d field
	IMAXattr     string            `json:"ima_xattr,omitempty"` // security.ima value (hex), for ima-sig
	// IMAAlgo is the algorithm the kernel hashes this file in when a template other than
	// "ima" is used: the one security.ima names (ima_get_hash_algo), "" for ima_hash.
	IMAAlgo  string `json:"ima_algo,omitempty"`
	EVMXattr string `json:"evm_xattr,omitempty"` // security.evm value (hex)
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Mode     uint32 `json:"mode"`
	// AppendedSig is true when the image ends with "~Module signature appended~" (modsig).
	AppendedSig bool `json:"appended_sig,omitempty"`
}

// InitrdImage is the initrd given to kexec_file_load: a memfd holding the base initrd,
// NUL padding and this archive. Its digest cannot be inside it: it is on the command line
// (Cmdline.Param) in the ima_hash algorithm.
type InitrdImage struct {
	MemfdName    string            `json:"memfd_name"`    // memfd_create name; IMA names the record "memfd:<name>"
	ResolvedPath string            `json:"resolved_path"` // readlink of the memfd, e.g. "/memfd:imakexec-initrd (deleted)"
	Sealed       bool              `json:"sealed"`
	BasePath     string            `json:"base_path,omitempty"` // --initrd as given; empty when there is none
	BaseResolved string            `json:"base_resolved,omitempty"`
	BaseSize     int64             `json:"base_size"`
	BaseDigests  map[string]string `json:"base_digests,omitempty"`
	Padding      int64             `json:"padding"`        // NUL bytes between the base and this archive
	ArchiveStart int64             `json:"archive_offset"` // offset of this archive in the memfd
}

// Cmdline is the command line handed to kexec_file_load, minus the digest parameter.
type Cmdline struct {
	Base   string `json:"base"`   // what the user asked for (or /proc/cmdline), without CmdlineParam
	Source string `json:"source"` // "append", "reuse" or "empty"
	Param  string `json:"param"`  // CmdlineParam; appended as " <param>=<algo>:<hex>[,<algo>:<hex>]"
}

// DrainInfo summarises the last drain before the load.
type DrainInfo struct {
	Records       int    `json:"records"`                  // records moved into the store by it
	KernelCarries int    `json:"kernel_carries,omitempty"` // staged records the kernel keeps and carries (ESTALE)
	Backend       string `json:"backend,omitempty"`
}

// StoreInfo lists the carried store files (below imakexec/store/), in archive order.
type StoreInfo struct {
	Dir   string      `json:"dir"` // HandoffStoreDir
	Files []StoreFile `json:"files"`
}

// StoreFile is one carried store file. Data is not part of the JSON.
type StoreFile struct {
	Name   string `json:"name"` // one path element
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Data   []byte `json:"-"`
}

// FileRead is a file opened for reading after the last drain.
type FileRead struct {
	Path     string `json:"path"`
	Size     int64  `json:"size"`
	Digest   string `json:"digest"` // "<ima_hash>:<hex>"
	IMAXattr string `json:"ima_xattr,omitempty"`
}

// ErrNoHandoff is returned when there is no handoff (a cold boot, or a kexec by another tool).
var ErrNoHandoff = errors.New("no imakexec handoff")

// ErrHandoff marks a handoff that is present but malformed or hostile.
var ErrHandoff = errors.New("bad imakexec handoff")

// Validate checks the fields readers depend on: format, version, store file names.
func (h *Handoff) Validate() error {
	if h.Format != HandoffFormat {
		return fmt.Errorf("%w: format %q, want %q", ErrHandoff, h.Format, HandoffFormat)
	}
	if h.Version != HandoffVersion {
		return fmt.Errorf("%w: version %d, this imakexec reads version %d", ErrHandoff, h.Version, HandoffVersion)
	}
	if h.Store.Dir != HandoffStoreDir {
		return fmt.Errorf("%w: store dir %q, want %q", ErrHandoff, h.Store.Dir, HandoffStoreDir)
	}
	if len(h.Store.Files) > maxStoreFiles {
		return fmt.Errorf("%w: %d store files (limit %d)", ErrHandoff, len(h.Store.Files), maxStoreFiles)
	}
	seen := map[string]bool{}
	for _, f := range h.Store.Files {
		if err := checkStoreName(f.Name); err != nil {
			return fmt.Errorf("%w: %v", ErrHandoff, err)
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: store file %q listed twice", ErrHandoff, f.Name)
		}
		seen[f.Name] = true
		if f.Size < 0 || len(f.SHA256) != 64 {
			return fmt.Errorf("%w: store file %q: bad size or sha256", ErrHandoff, f.Name)
		}
	}
	if h.OldKernel.IMAHash == "" {
		return fmt.Errorf("%w: no ima_hash", ErrHandoff)
	}
	return nil
}

// checkStoreName accepts a clean relative path of at most maxStoreDepth plain elements
// ("manifest.jsonl", "segments/000001.kexec").
func checkStoreName(name string) error {
	els := strings.Split(name, "/")
	if len(els) > maxStoreDepth {
		return fmt.Errorf("store file name %q is nested deeper than %d", name, maxStoreDepth)
	}
	for _, el := range els {
		switch {
		case el == "", el == ".", el == "..":
			return fmt.Errorf("store file name %q", name)
		case len(el) > storeNameMax:
			return fmt.Errorf("store file name element of %d bytes", len(el))
		case strings.ContainsRune(el, 0):
			return fmt.Errorf("store file name %q contains NUL", name)
		}
	}
	return nil
}

// storeDirs returns the directories below the store that the names need, parents first.
func storeDirs(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		for d := path.Dir(n); d != "."; d = path.Dir(d) {
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out
}

// ParseHandoff decodes and validates handoff.json (at most 1 MiB; unknown fields are
// ignored so that later minor additions stay readable).
func ParseHandoff(b []byte) (*Handoff, error) {
	if len(b) > maxHandoffJSON {
		return nil, fmt.Errorf("%w: handoff.json is %d bytes (limit %d)", ErrHandoff, len(b), maxHandoffJSON)
	}
	var h Handoff
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%w: handoff.json: %v", ErrHandoff, err)
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return &h, nil
}

// ReadHandoff reads a handoff unpacked by the kernel. dir is the handoff directory, i.e.
// "/imakexec" in the next kernel's rootfs (HandoffDir below the root). It reads
// dir/handoff.json and every file it lists from dir/store/, refusing symlinks, non-regular
// files, unlisted or missing files, and sizes or SHA-256 values that differ from the listing.
// The returned StoreFiles carry their Data. ErrNoHandoff: dir does not exist.
func ReadHandoff(dir string) (*Handoff, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoHandoff, dir)
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrHandoff, dir)
	}
	b, err := readRegular(filepath.Join(dir, path.Base(HandoffJSONName)), maxHandoffJSON)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandoff, err)
	}
	h, err := ParseHandoff(b)
	if err != nil {
		return nil, err
	}
	storeDir := filepath.Join(dir, path.Base(HandoffStoreDir))
	sfi, err := os.Lstat(storeDir)
	if err != nil || !sfi.IsDir() {
		return nil, fmt.Errorf("%w: store directory %s missing or not a directory", ErrHandoff, storeDir)
	}
	listed := map[string]bool{}
	for _, f := range h.Store.Files {
		listed[f.Name] = true
	}
	err = filepath.WalkDir(storeDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == storeDir {
			return nil
		}
		rel, _ := filepath.Rel(storeDir, p)
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return nil
		case !d.Type().IsRegular():
			return fmt.Errorf("store entry %q is not a regular file", rel)
		case !listed[rel]:
			return fmt.Errorf("store file %q is not listed in handoff.json", rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandoff, err)
	}
	var total int64
	for i := range h.Store.Files {
		f := &h.Store.Files[i]
		total += f.Size
		if total > defaultMaxStore {
			return nil, fmt.Errorf("%w: store files exceed %d bytes", ErrHandoff, defaultMaxStore)
		}
		// Store files are read as the store reads them (openat below the directory, no
		// symlink, no FIFO, owned by us).
		data, err := storefs.ReadFile(storeDir, f.Name, f.Size)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrHandoff, err)
		}
		if int64(len(data)) != f.Size {
			return nil, fmt.Errorf("%w: store file %q is %d bytes, listed as %d", ErrHandoff, f.Name, len(data), f.Size)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != f.SHA256 {
			return nil, fmt.Errorf("%w: store file %q does not match its listed sha256", ErrHandoff, f.Name)
		}
		f.Data = data
	}
	return h, nil
}

// MarshalHandoff encodes h as handoff.json after filling the store listing from files.
func MarshalHandoff(h *Handoff) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// NewStoreFile returns a StoreFile for data with its size and SHA-256 filled in.
func NewStoreFile(name string, data []byte) StoreFile {
	sum := sha256.Sum256(data)
	return StoreFile{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), Data: data}
}

// ImageHandoff is a handoff found in an initramfs image by ReadImageHandoff.
type ImageHandoff struct {
	Handoff  *Handoff
	Segment  int           // top-level segment holding it
	Segments []SegmentInfo // all top-level segments of the image
}

// ReadImageHandoff finds and reads the handoff archive in an initramfs image (base initrd,
// padding, appended archive), without unpacking anything to disk. The handoff must be the
// whole of one plain (uncompressed) top-level segment, and no other segment may hold any
// name below imakexec/ (a later or earlier one would mix with it when the kernel unpacks).
// Inside the handoff only directories imakexec and imakexec/store and regular files with
// one link are accepted; names must be clean and relative; the sizes are bounded.
// ErrNoHandoff: the image holds no handoff.
func ReadImageHandoff(r io.ReaderAt, size int64, lim Limits) (*ImageHandoff, error) {
	var (
		jsonData []byte
		files    = map[string][]byte{}
		dirs     = map[string]bool{}
		seg      = -1
		total    int64
	)
	segs, err := Walk(r, size, lim, func(e *Entry, data io.Reader) error {
		name, inHandoff, err := handoffName(e.Name)
		if err != nil {
			return err
		}
		if !inHandoff {
			if seg >= 0 && e.Segment == seg {
				return fmt.Errorf("%w: %q outside %s/ in the handoff archive", ErrHandoff, e.Name, HandoffDir)
			}
			return nil
		}
		if e.Compression != "" {
			return fmt.Errorf("%w: %q in a %s-compressed segment; the handoff travels uncompressed", ErrHandoff, e.Name, e.Compression)
		}
		if seg >= 0 && e.Segment != seg {
			return fmt.Errorf("%w: %s/ entries in segments %d and %d (the base initrd already carries a handoff?)", ErrHandoff, HandoffDir, seg, e.Segment)
		}
		seg = e.Segment
		switch e.Type() {
		case ModeDir:
			rel, under := strings.CutPrefix(name, HandoffStoreDir+"/")
			if name != HandoffDir && name != HandoffStoreDir && (!under || checkStoreName(rel) != nil) {
				return fmt.Errorf("%w: unexpected directory %q", ErrHandoff, name)
			}
			dirs[name] = true
			return nil
		case ModeRegular:
		case ModeSymlink:
			return fmt.Errorf("%w: symlink %q in the handoff", ErrHandoff, name)
		case ModeChar, ModeBlock:
			return fmt.Errorf("%w: device node %q in the handoff", ErrHandoff, name)
		default:
			return fmt.Errorf("%w: %q has file type %#o", ErrHandoff, name, e.Type())
		}
		if e.NLink > 1 {
			return fmt.Errorf("%w: %q is a hard link (nlink %d)", ErrHandoff, name, e.NLink)
		}
		var limit int64
		switch {
		case name == HandoffJSONName:
			limit = maxHandoffJSON
		case strings.HasPrefix(name, HandoffStoreDir+"/") && checkStoreName(strings.TrimPrefix(name, HandoffStoreDir+"/")) == nil:
			limit = defaultMaxStore - total
			if len(files) >= maxStoreFiles {
				return fmt.Errorf("%w: more than %d store files", ErrHandoff, maxStoreFiles)
			}
		default:
			return fmt.Errorf("%w: unexpected file %q", ErrHandoff, name)
		}
		if int64(e.Size) > limit {
			return fmt.Errorf("%w: %q is %d bytes (limit %d)", ErrHandoff, name, e.Size, limit)
		}
		if _, dup := files[name]; dup || (name == HandoffJSONName && jsonData != nil) {
			return fmt.Errorf("%w: %q appears twice", ErrHandoff, name)
		}
		b := make([]byte, e.Size) // bounded above, and Walk checked it against the input
		if _, err := io.ReadFull(data, b); err != nil {
			return fmt.Errorf("%w: %q: %v", ErrHandoff, name, err)
		}
		if name == HandoffJSONName {
			jsonData = b
		} else {
			total += int64(len(b))
			files[strings.TrimPrefix(name, HandoffStoreDir+"/")] = b
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if seg < 0 {
		return nil, ErrNoHandoff
	}
	if jsonData == nil {
		return nil, fmt.Errorf("%w: no %s", ErrHandoff, HandoffJSONName)
	}
	h, err := ParseHandoff(jsonData)
	if err != nil {
		return nil, err
	}
	if len(files) != len(h.Store.Files) {
		return nil, fmt.Errorf("%w: archive holds %d store files, handoff.json lists %d", ErrHandoff, len(files), len(h.Store.Files))
	}
	for i := range h.Store.Files {
		f := &h.Store.Files[i]
		data, ok := files[f.Name]
		if !ok {
			return nil, fmt.Errorf("%w: listed store file %q is not in the archive", ErrHandoff, f.Name)
		}
		if sum := sha256.Sum256(data); int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			return nil, fmt.Errorf("%w: store file %q does not match its listing", ErrHandoff, f.Name)
		}
		f.Data = data
	}
	return &ImageHandoff{Handoff: h, Segment: seg, Segments: segs}, nil
}

// handoffName cleans an archive name and reports whether it is in the handoff namespace.
// Names the kernel would resolve outside the root, or ambiguously, are refused everywhere.
func handoffName(raw string) (string, bool, error) {
	if strings.HasPrefix(raw, "/") {
		return "", false, fmt.Errorf("%w: absolute name %q", ErrHandoff, raw)
	}
	for _, el := range strings.Split(raw, "/") {
		if el == ".." {
			return "", false, fmt.Errorf("%w: name %q has a .. element", ErrHandoff, raw)
		}
	}
	name := path.Clean(raw)
	in := name == HandoffDir || strings.HasPrefix(name, HandoffDir+"/")
	if in && name != raw {
		return "", false, fmt.Errorf("%w: handoff name %q is not clean", ErrHandoff, raw)
	}
	return name, in, nil
}

// sortedStore returns the store files sorted by name (archive order).
func sortedStore(files []StoreFile) []StoreFile {
	out := append([]StoreFile(nil), files...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// fdXattr reads one extended attribute of an open file, "" when absent or unreadable.
func fdXattr(fd int, name string) string {
	buf := make([]byte, xattrMax)
	n, err := unix.Fgetxattr(fd, name, buf)
	if err != nil || n <= 0 {
		return ""
	}
	return hex.EncodeToString(buf[:n])
}

var modsigMagic = []byte("~Module signature appended~\n")

func hasModsig(tail []byte) bool { return bytes.HasSuffix(tail, modsigMagic) }
