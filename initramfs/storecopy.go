package initramfs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// readStore reads the store's regular files before the drain (archived chains below
// archive/ are never joined and are not carried).
func readStore(o KexecOptions) ([]StoreFile, error) {
	o.Trace("read-store")
	names, err := ListStore(o.Store)
	if err != nil {
		return nil, fmt.Errorf("read store: %w", err)
	}
	var out []StoreFile
	var total int64
	for _, n := range names {
		data, err := readStoreFile(o, n, defaultMaxStore-total)
		if err != nil {
			return nil, fmt.Errorf("read store: %w", err)
		}
		total += int64(len(data))
		out = append(out, NewStoreFile(n, data))
	}
	return out, nil
}

// readStoreFile reads the store file rel through KexecOptions.OpenStore (storefs's safe
// open), at most max bytes.
func readStoreFile(o KexecOptions, rel string, max int64) ([]byte, error) {
	f, err := o.OpenStore(o.Store, rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, filepath.Join(o.Store, filepath.FromSlash(rel)), max)
}

// ListStore lists the files of a store directory that a handoff carries: regular files,
// relative names with '/', without the lock, temporary files and archive/. Listing reads
// directories only (no file is opened). A missing directory is an empty store.
func ListStore(dir string) ([]string, error) {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "archive" || isTempName(d.Name()) {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || isTempName(d.Name()) || checkStoreName(rel) != nil {
			return nil
		}
		names = append(names, rel)
		return nil
	})
	return names, err
}

// isTempName skips the store's lock and temporary files.
func isTempName(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".tmp") || name == "lock"
}

// storeAfterDrain merges the drain's listing with the pre-drain copy. Files neither carried
// by the drain nor matching the copy are read now and recorded as post-drain reads.
func storeAfterDrain(o KexecOptions, snapshot []StoreFile, dr *Drained, algo string) ([]StoreFile, []FileRead, error) {
	if dr.Store == nil {
		return snapshot, nil, nil
	}
	old := map[string]StoreFile{}
	for _, f := range snapshot {
		old[f.Name] = f
	}
	var out []StoreFile
	var reads []FileRead
	var total int64
	for _, f := range dr.Store {
		if err := checkStoreName(f.Name); err != nil {
			return nil, nil, fmt.Errorf("drain result: %w", err)
		}
		s, ok := old[f.Name]
		a, appended := dr.Appended[f.Name]
		var joined []byte
		if appended {
			joined, appended = a.join(s.Data, ok, f.Size)
		}
		switch {
		case f.Data != nil:
			out = append(out, NewStoreFile(f.Name, f.Data))
		case appended:
			out = append(out, NewStoreFile(f.Name, joined))
		case ok && s.Size == f.Size && (f.SHA256 == "" || f.SHA256 == s.SHA256):
			out = append(out, s)
		default:
			name := filepath.Join(o.Store, filepath.FromSlash(f.Name))
			o.Trace("post-drain-read")
			data, err := readStoreFile(o, f.Name, defaultMaxStore-total)
			if err != nil {
				return nil, nil, fmt.Errorf("read store file after drain: %w", err)
			}
			h := supportedIMAHash[algo]
			if h == nil {
				h = sha256.New
			}
			hh := h()
			hh.Write(data)
			abs, _ := filepath.Abs(name)
			reads = append(reads, FileRead{Path: abs, Size: int64(len(data)), Digest: algo + ":" + hex.EncodeToString(hh.Sum(nil))})
			out = append(out, NewStoreFile(f.Name, data))
		}
		total += out[len(out)-1].Size
		if total > defaultMaxStore {
			return nil, nil, fmt.Errorf("store exceeds %d bytes", defaultMaxStore)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, reads, nil
}

func storeBytes(files []StoreFile) int64 {
	var n int64
	for _, f := range files {
		n += int64(len(f.Data))
	}
	return n
}
