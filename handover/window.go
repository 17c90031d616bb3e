package handover

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/imakexec/imakexec/initramfs"
)

// WindowFromHandoff turns the old kernel's handoff into what rejoin needs to rebuild the
// kexec-window records: the kernel image and the initrd as kexec_file_load read them, the
// files read after the last drain, and the command line the next kernel was given (the
// kexec-cmdline buffer, which /proc/cmdline of the next kernel repeats byte for byte:
// ima_kexec_cmdline measures the buffer the kernel then boots with). nil without a
// handoff. Nothing here is trusted: each rebuilt record is kept only if the TPM proves it.
func WindowFromHandoff(h *initramfs.Handoff, procCmdline string) *WindowInputs {
	if h == nil {
		return nil
	}
	w := &WindowInputs{IMAHash: h.OldKernel.IMAHash, Templates: h.OldKernel.Templates, PCR: 10}
	for _, r := range h.PostDrainReads {
		algo, d, ok := strings.Cut(r.Digest, ":")
		dg, err := hex.DecodeString(d)
		if !ok || err != nil {
			continue
		}
		w.Files = append(w.Files, WindowFile{What: "read", Names: []string{r.Path},
			Digests: map[string][]byte{algo: dg}, IMAXattr: unhex(r.IMAXattr), Mode: 0o100644})
	}
	k := h.Kernel
	kf := WindowFile{What: "kernel", Names: uniq(k.ResolvedPath, k.Path), Digests: map[string][]byte{},
		IMAXattr: unhex(k.IMAXattr), UID: k.UID, GID: k.GID, Mode: uint16(k.Mode), Algo: k.IMAAlgo}
	for a, d := range k.Digests {
		kf.Digests[a] = unhex(d)
	}
	w.Files = append(w.Files, kf)
	// The initrd's digest travels on the command line (initramfs.InitrdDigests).
	if digests := initramfs.InitrdDigests(procCmdline); len(digests) > 0 {
		names := uniq("memfd:"+h.Initrd.MemfdName, h.Initrd.ResolvedPath, "/memfd:"+h.Initrd.MemfdName+" (deleted)")
		w.Files = append(w.Files, WindowFile{What: "initrd", Names: names, Digests: digests, Mode: 0o100777})
	}
	if procCmdline != "" {
		c := procCmdline
		w.Cmdline = &c
	}
	return w
}

// ReadProcCmdline returns p.Proc/cmdline without its trailing newline (the kernel adds
// one when it prints the line), "" when it cannot be read.
func ReadProcCmdline(p Paths) string {
	p = p.withDefaults()
	b, err := os.ReadFile(filepath.Join(p.Proc, "cmdline"))
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
