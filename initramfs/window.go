package initramfs

import (
	"strings"
)

// WindowRecord is a record that may be measured after the last drain, as predicted.
type WindowRecord struct {
	Hook   string `json:"hook"` // KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK, KEXEC_CMDLINE, FILE_CHECK, CRITICAL_DATA
	Name   string `json:"name"`
	Digest string `json:"digest,omitempty"` // "<algo>:<hex>" of the measured content
	Note   string `json:"note,omitempty"`
}

// predictWindow lists the records kexec_file_load may add under a policy with KEXEC_*
// rules (docs/kernel.md, "The kexec window"), for the plan and for rejoin's
// reconstruction.
func predictWindow(h *Handoff, param string) []WindowRecord {
	algo := h.OldKernel.IMAHash
	out := []WindowRecord{{
		Hook: "KEXEC_KERNEL_CHECK", Name: h.Kernel.ResolvedPath, Digest: algo + ":" + h.Kernel.Digests[algo],
		Note: "absent when the open before the drain was measured (IMA's per-file cache)",
	}}
	init := WindowRecord{Hook: "KEXEC_INITRAMFS_CHECK", Name: "memfd:" + MemfdName,
		Note: "digest is on the next kernel's command line (" + CmdlineParam + "=)"}
	if param != "" {
		init.Digest = strings.Split(param, ",")[0]
	}
	out = append(out, init)
	cl := WindowRecord{Hook: "KEXEC_CMDLINE", Name: "kexec-cmdline", Note: "ima-buf of the command line, equal to the next kernel's /proc/cmdline"}
	out = append(out, cl)
	for _, r := range h.PostDrainReads {
		out = append(out, WindowRecord{Hook: "FILE_CHECK", Name: r.Path, Digest: r.Digest, Note: "store file read after the drain"})
	}
	out = append(out, WindowRecord{Hook: "CRITICAL_DATA", Name: "kexec_load", Note: "6.16+ with a critical_data rule; sizes of the list at load"})
	return out
}
