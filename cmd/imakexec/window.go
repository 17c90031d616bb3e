package main

import (
	"encoding/hex"
	"os"
	"slices"
	"strings"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// windowFromHandoff turns the old kernel's handoff into what rejoin needs to rebuild the
// kexec-window records: the kernel image and initrd as kexec_file_load read them, the files
// read after the last drain, and the command line the next kernel was given (the kexec-cmdline
// buffer, which /proc/cmdline of this kernel repeats byte for byte).
func windowFromHandoff(h *initramfs.Handoff, procCmdline string) *handover.WindowInputs {
	if h == nil {
		return nil
	}
	w := &handover.WindowInputs{IMAHash: h.OldKernel.IMAHash, Templates: h.OldKernel.Templates, PCR: 10}
	for _, r := range h.PostDrainReads {
		algo, d, ok := strings.Cut(r.Digest, ":")
		dg, err := hex.DecodeString(d)
		if !ok || err != nil {
			continue
		}
		w.Files = append(w.Files, handover.WindowFile{What: "read", Names: []string{r.Path},
			Digests: map[string][]byte{algo: dg}, IMAXattr: unhex(r.IMAXattr), Mode: 0o100644})
	}
	k := h.Kernel
	kf := handover.WindowFile{What: "kernel", Names: uniq(k.ResolvedPath, k.Path), Digests: map[string][]byte{},
		IMAXattr: unhex(k.IMAXattr), UID: k.UID, GID: k.GID, Mode: uint16(k.Mode)}
	for a, d := range k.Digests {
		kf.Digests[a] = unhex(d)
	}
	w.Files = append(w.Files, kf)
	// The initrd's digest travels on the command line: imakexec.initrd=<algo>:<hex>[,...].
	if digests := initrdDigests(procCmdline); len(digests) > 0 {
		names := uniq("memfd:"+h.Initrd.MemfdName, h.Initrd.ResolvedPath, "/memfd:"+h.Initrd.MemfdName+" (deleted)")
		w.Files = append(w.Files, handover.WindowFile{What: "initrd", Names: names, Digests: digests, Mode: 0o100777})
	}
	if procCmdline != "" {
		c := procCmdline
		w.Cmdline = &c
	}
	return w
}

func initrdDigests(cmdline string) map[string][]byte {
	out := map[string][]byte{}
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, initramfs.CmdlineParam+"=")
		if !ok {
			continue
		}
		for _, part := range strings.Split(v, ",") {
			algo, d, ok := strings.Cut(part, ":")
			if b, err := hex.DecodeString(d); ok && err == nil {
				out[algo] = b
			}
		}
	}
	return out
}

// readCmdline returns /proc/cmdline without its trailing newline.
func readCmdline(proc string) string {
	b, err := os.ReadFile(proc + "/cmdline")
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\n")
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) == 0 {
		return nil
	}
	return b
}

func uniq(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
