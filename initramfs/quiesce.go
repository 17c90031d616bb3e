package initramfs

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The direct jump (imakexec kexec without --load-only) skips the init system's shutdown: the
// next boot would replay the journal of every filesystem mounted read-write. Before the jump,
// Quiesce remounts each local (block-device) filesystem read-only, and freezes the ones that
// refuse (files still open for writing): FIFREEZE flushes the journal and clears the
// needs_recovery flag (ext4_freeze, xfs_fs_freeze), so the next mount finds it clean.

// FIFREEZE and FITHAW are _IOWR('X', 119, int) and _IOWR('X', 120, int) (include/uapi/linux/fs.h).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

// Mount is one line of /proc/self/mountinfo that Quiesce may act on.
type Mount struct {
	Point, FSType, Source string
	ReadOnly              bool
}

// LocalMounts parses mountinfo and returns the filesystems on block devices, innermost
// (last mounted) first.
func LocalMounts(mountinfo []byte) []Mount {
	var out []Mount
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 2 || !strings.HasPrefix(g[1], "/dev/") {
			continue
		}
		m := Mount{Point: unescapeMount(f[4]), FSType: g[0], Source: g[1]}
		for _, o := range strings.Split(f[5], ",") {
			m.ReadOnly = m.ReadOnly || o == "ro"
		}
		out = append(out, m)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// unescapeMount undoes the octal escapes of mountinfo (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			if v, ok := octal3(s[i+1:]); ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func octal3(s string) (byte, bool) {
	if len(s) < 3 {
		return 0, false
	}
	var v int
	for _, c := range s[:3] {
		if c < '0' || c > '7' {
			return 0, false
		}
		v = v*8 + int(c-'0')
	}
	return byte(v), v < 256
}

// frozen are the mount points Quiesce froze, thawed again when the jump fails.
var frozen []string

// Quiesce syncs, then makes every local filesystem clean for the next boot: a read-only
// remount, else a freeze. It returns what it could do neither for (those will be recovered
// by their journal in the next boot).
func Quiesce() (unclean []string) {
	unix.Sync()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return []string{"/proc/self/mountinfo: " + err.Error()}
	}
	for _, m := range LocalMounts(b) {
		if m.ReadOnly {
			continue
		}
		if err := unix.Mount("", m.Point, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err == nil {
			continue
		}
		if err := freeze(m.Point); err != nil {
			unclean = append(unclean, m.Point+": "+err.Error())
			continue
		}
		frozen = append(frozen, m.Point)
	}
	return unclean
}

func freeze(point string) error {
	fd, err := unix.Open(point, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, fiFreeze, 0); err != nil && !errors.Is(err, unix.EBUSY) {
		return err
	}
	return nil
}

// Thaw undoes the freezes of Quiesce (the jump failed: the system goes on).
func Thaw() {
	for _, p := range frozen {
		if fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
			_ = unix.IoctlSetInt(fd, fiThaw, 0)
			unix.Close(fd)
		}
	}
	frozen = nil
}
