package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// A host whose root is on disk boots the distribution's initramfs, which switch_roots away
// from the /imakexec the kernel unpacked; the initramfs-tools script and the dracut module
// keep a copy in /run/imakexec/handoff. rejoin looks there, then in the initramfs's own
// /imakexec (a host that never leaves its initramfs), then beside the store.

// KeptHandoffDir is where the initramfs-tools script and the dracut module keep the handoff.
const KeptHandoffDir = "/run/imakexec/handoff"

// handoffDirs lists where rejoin looks for the handoff when --handoff is not given.
func handoffDirs(store string) []string {
	return []string{KeptHandoffDir, "/" + initramfs.HandoffDir, filepath.Join(store, "handoff")}
}

// findHandoff reads the handoff from dir, or from the first of handoffDirs that exists.
// No handoff anywhere (a cold boot, or a kexec by another tool) is nil, "", nil.
func findHandoff(dir, store string) (*initramfs.Handoff, string, error) {
	dirs := []string{dir}
	if dir == "" {
		dirs = handoffDirs(store)
	}
	for _, d := range dirs {
		h, err := initramfs.ReadHandoff(d)
		if errors.Is(err, initramfs.ErrNoHandoff) {
			continue
		}
		if err != nil {
			return nil, d, err
		}
		return h, d, nil
	}
	return nil, "", nil
}

// checkDiskStore compares the store on disk with the listing the handoff carried
// (Handoff.DiskStore): every listed file must still begin with the bytes it had at the
// load (segments are never rewritten, the manifest only grows). A difference is tampering
// or a store restored from elsewhere between the boots, and is named.
func checkDiskStore(h *initramfs.Handoff, store string) error {
	if h == nil || h.DiskStore == nil {
		return nil
	}
	var bad []string
	for _, f := range h.DiskStore.Files {
		if strings.Contains(f.Name, "..") || strings.HasPrefix(f.Name, "/") {
			return fmt.Errorf("%w: handoff lists store file %q", initramfs.ErrHandoff, f.Name)
		}
		sum, n, err := prefixSHA256(filepath.Join(store, filepath.FromSlash(f.Name)), f.Size)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", f.Name, err))
		case n < f.Size:
			bad = append(bad, fmt.Sprintf("%s: %d bytes, the handoff had %d", f.Name, n, f.Size))
		case sum != f.SHA256:
			bad = append(bad, fmt.Sprintf("%s: its first %d bytes differ from the handoff's (sha256 %s, carried %s)", f.Name, f.Size, short(sum), short(f.SHA256)))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: the store on disk (%s) disagrees with the listing the old kernel's handoff carried: %s (changed between the boots)",
			handover.ErrTampered, store, strings.Join(bad, "; "))
	}
	return nil
}

// prefixSHA256 hashes the first size bytes of a regular file, not following a symlink.
func prefixSHA256(name string, size int64) (string, int64, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return "", 0, fmt.Errorf("not a regular file")
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, size))
	if err != nil {
		return "", n, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}

// explainJoinError names the likelier cause when the join fails after a load-only kexec:
// the jump was made by another tool (systemctl kexec), so the whole shutdown ran after the
// last drain of imakexec kexec.
func explainJoinError(err error, h *initramfs.Handoff) error {
	var je *handover.JoinError
	if err == nil || h == nil || !h.LoadOnly || !errors.As(err, &je) {
		return err
	}
	return fmt.Errorf("%w; the old kernel was loaded with --load-only and another tool made the jump: the clean shutdown measured records after the last drain (unit files, umount, systemd-shutdown, kexec -e) and a kernel without carry at execute drops them; imakexec-shutdown.service (last drain) and the system-shutdown hook (check, then jump) close that gap", err)
}

// storeOnDisk resolves --carry: true when the store stays on disk and only the window
// description travels in the initrd.
func storeOnDisk(carry, store string) (bool, error) {
	switch carry {
	case "store":
		return false, nil
	case "window":
		return true, nil
	case "auto", "":
	default:
		return false, usageErrorf("--carry %q: want auto, store or window", carry)
	}
	var st unix.Statfs_t
	dir := store
	for {
		if err := unix.Statfs(dir, &st); err == nil {
			break
		} else if !errors.Is(err, unix.ENOENT) || dir == filepath.Dir(dir) {
			return false, fmt.Errorf("statfs %s: %w", dir, err)
		}
		dir = filepath.Dir(dir)
	}
	switch st.Type {
	case unix.TMPFS_MAGIC, unix.RAMFS_MAGIC:
		return false, nil
	}
	return true, nil
}

// noteLoaded leaves the loaded mark for the system-shutdown hook.
func noteLoaded(env *Env, rep *initramfs.KexecReport) {
	if err := handover.WriteLoadedMark("", "", handover.LoadedMark{Kernel: rep.Kernel.Path, Cmdline: rep.Cmdline}); err != nil {
		fmt.Fprintf(env.Stderr, "imakexec kexec: warning: %v: the system-shutdown hook will leave the jump to systemd-shutdown\n", err)
	}
}
