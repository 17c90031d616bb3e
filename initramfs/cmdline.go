package initramfs

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/imakexec/imakexec/internal/kcmdline"
)

// maxCmdline bounds a command line read from procfs (COMMAND_LINE_SIZE is 2048 on x86
// and at most a few KiB elsewhere).
const maxCmdline = 64 << 10

// baseCmdline returns the command line for the next kernel without any imakexec.initrd=
// parameter (imakexec sets it), and where it came from: "reuse", "append" or "empty".
// The other arguments are kept byte for byte, quotes included, as next_arg splits them.
func baseCmdline(o KexecOptions) (string, string, error) {
	src, cl := "empty", ""
	switch {
	case o.ReuseCmdline:
		o.Trace("read-cmdline")
		b, err := readInput(o, filepath.Join(o.Proc, "cmdline"), maxCmdline)
		if err != nil {
			return "", "", fmt.Errorf("read running command line: %w", err)
		}
		src, cl = "reuse", string(b)
	case o.Cmdline != "":
		src, cl = "append", o.Cmdline
	}
	return kcmdline.Without(cl, CmdlineParam), src, nil
}

// InitrdParam returns the value imakexec puts on the next kernel's command line for the
// initrd given to kexec_file_load: "<algo>:<hex>[,<algo>:<hex>...]".
func InitrdParam(digests []AlgoDigest) string {
	parts := make([]string, len(digests))
	for i, d := range digests {
		parts[i] = d.Algo + ":" + hex.EncodeToString(d.Digest)
	}
	return strings.Join(parts, ",")
}

// AlgoDigest is a digest and the kernel's name of its algorithm.
type AlgoDigest struct {
	Algo   string
	Digest []byte
}

// InitrdDigests reads the initrd's digests back from a command line (the next kernel's
// /proc/cmdline): every imakexec.initrd= argument, each "<algo>:<hex>" part of it that
// decodes. The initrd cannot hold its own digest, so it travels here; rejoin rebuilds the
// KEXEC_INITRAMFS_CHECK record from it.
func InitrdDigests(cmdline string) map[string][]byte {
	out := map[string][]byte{}
	for _, v := range kcmdline.Values(cmdline, CmdlineParam) {
		for _, part := range strings.Split(v, ",") {
			algo, d, ok := strings.Cut(part, ":")
			if b, err := hex.DecodeString(d); ok && err == nil && algo != "" && len(b) > 0 {
				out[algo] = b
			}
		}
	}
	return out
}
