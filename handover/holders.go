package handover

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Who holds the IMA files. On 7.2 the list files admit one writer or many readers
// (ima_measurements_open: a reader while a writer has the file, or a writer while readers
// do, gets EBUSY), so a long-lived reader such as an attestation agent blocks every drain.
// When EBUSY persists, drain and status name the processes from /proc/*/fd.

// procRoot is the real procfs, where other processes' descriptors are listed (Paths.Proc
// may be a test tree that only plays the kernel's own files).
var procRoot = "/proc"

// maxHolderFds bounds the descriptors looked at, so a host with very many costs little.
const maxHolderFds = 200_000

// IMAHolder is a process with a descriptor open on a file of the IMA directory.
type IMAHolder struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
	File    string `json:"file"`
	Mode    string `json:"mode"` // "read", "write" or "read-write"
}

func (h IMAHolder) String() string {
	return fmt.Sprintf("pid %d (%s) has %s open for %s", h.PID, h.Command, h.File, h.Mode)
}

// IMAHolders lists the processes that hold files of the IMA directory dir open.
func IMAHolders(dir string) []IMAHolder {
	dirs := []string{filepath.Clean(dir)}
	if r, err := filepath.EvalSymlinks(dir); err == nil && r != dirs[0] {
		dirs = append(dirs, r)
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	var out []IMAHolder
	seen := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(procRoot, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if seen++; seen > maxHolderFds {
				return out
			}
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err != nil {
				continue
			}
			var file string
			for _, d := range dirs {
				if rest, ok := strings.CutPrefix(target, d+"/"); ok {
					file = rest
				}
			}
			if file == "" {
				continue
			}
			out = append(out, IMAHolder{PID: pid, Command: commandOf(pid), File: file, Mode: fdMode(pid, fd.Name())})
		}
	}
	return out
}

func commandOf(pid int) string {
	if pid == os.Getpid() {
		return "this process"
	}
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "comm"))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// fdMode reads the access mode from /proc/PID/fdinfo/FD ("flags: 0100002").
func fdMode(pid int, fd string) string {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "fdinfo", fd))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			f, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return "?"
			}
			switch f & 3 {
			case 0:
				return "read"
			case 1:
				return "write"
			default:
				return "read-write"
			}
		}
	}
	return "?"
}

// busyHint names the holders of the IMA files for an EBUSY error, and the way out.
func busyHint(dir string) string {
	hs := IMAHolders(dir)
	if len(hs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("; ")
	for i, h := range hs {
		if i > 0 {
			b.WriteString(", ")
		}
		if i == 8 {
			fmt.Fprintf(&b, "and %d more", len(hs)-i)
			break
		}
		b.WriteString(h.String())
	}
	b.WriteString(". A reader that keeps the IMA files open blocks every drain: let it read the joined log from `imakexec serve` instead")
	return b.String()
}
