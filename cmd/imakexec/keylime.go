package main

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"regexp"
	"sort"
	"strings"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// keylimeCompat is verify --json's "keylime": whether Keylime's verifier can parse the
// chain (handover.CheckKeylime), or why that could not be told.
func keylimeCompat(ctx context.Context, p handover.Paths, store string) any {
	k, err := handover.CheckKeylime(ctx, handover.ChainOptions{Paths: p, StoreDir: store})
	if err != nil {
		return map[string]any{"compatible": false, "reasons": []string{"the chain could not be read: " + err.Error()}}
	}
	return k
}

// A Keylime runtime policy for the records every imakexec kexec adds to the log
// (`imakexec kexec --dry-run --keylime-excludes`): the kernel image (KEXEC_KERNEL_CHECK),
// the per-kexec initrd memfd:imakexec-initrd (KEXEC_INITRAMFS_CHECK), the kexec-cmdline
// buffer (with imakexec.initrd=), and the 6.16+ critical-data records kexec_load and
// kexec_execute. Keylime's verifier (keylime/ima/ima.py, _validate_ima_ng) accepts an
// ima-ng/ima-buf entry whose name matches an "excludes" regex, or whose digest is listed
// under its name in "digests" (files) or "ima-buf" (buffers).

// keylimePolicy is a complete runtime policy (RUNTIME_POLICY_SCHEMA, version 1) holding only
// the kexec's records; merge its digests, ima-buf and excludes into the host's policy.
type keylimePolicy struct {
	Meta struct {
		Version   int `json:"version"`
		Generator int `json:"generator"`
	} `json:"meta"`
	Release          int                 `json:"release"`
	Digests          map[string][]string `json:"digests"`
	Excludes         []string            `json:"excludes"`
	Keyrings         map[string][]string `json:"keyrings"`
	IMA              keylimeIMA          `json:"ima"`
	IMABuf           map[string][]string `json:"ima-buf"`
	VerificationKeys string              `json:"verification-keys"`
}

type keylimeIMA struct {
	IgnoredKeyrings []string `json:"ignored_keyrings"`
	LogHashAlg      string   `json:"log_hash_alg"`
	DMPolicy        *string  `json:"dm_policy"`
}

// keylimeExcludes builds the policy from a kexec report. Digests known now are listed: the
// kernel image's (in every algorithm hashed), and after a load (--load-only) the initrd's
// and the command line's. What is not known yet is excluded by name: before the load the
// initrd (its handoff archive is written after the last drain) and so the command line
// that carries its digest; kexec_load and kexec_execute always (their buffers hold the
// list's size at that moment).
func keylimeExcludes(r *initramfs.KexecReport) *keylimePolicy {
	p := &keylimePolicy{Digests: map[string][]string{}, Keyrings: map[string][]string{}, IMABuf: map[string][]string{},
		Excludes: []string{}, IMA: keylimeIMA{IgnoredKeyrings: []string{}, LogHashAlg: "sha1"}}
	p.Meta.Version = 1
	name := r.Kernel.ResolvedPath
	if name == "" {
		name = r.Kernel.Path
	}
	for _, d := range r.Kernel.Digests {
		p.Digests[name] = append(p.Digests[name], d)
	}
	sort.Strings(p.Digests[name])
	initrd := "memfd:" + initramfs.MemfdName
	algo, digest := cmdlineInitrdDigest(r.Cmdline)
	h := keylimeHash(algo)
	if digest != "" && h != nil && !r.DryRun {
		p.Digests[initrd] = []string{digest}
		h.Write([]byte(r.Cmdline))
		p.IMABuf["kexec-cmdline"] = []string{hex.EncodeToString(h.Sum(nil))}
	} else {
		p.Excludes = append(p.Excludes, "^"+regexp.QuoteMeta(initrd)+"$", "^kexec-cmdline$")
	}
	for _, w := range r.Predicted {
		if w.Hook == "FILE_CHECK" && w.Digest != "" {
			if _, hexd, ok := strings.Cut(w.Digest, ":"); ok {
				p.Digests[w.Name] = append(p.Digests[w.Name], hexd)
			}
		}
	}
	p.Excludes = append(p.Excludes, "^kexec_load$", "^kexec_execute$")
	return p
}

// cmdlineInitrdDigest returns the algorithm and hex digest of imakexec.initrd=ALGO:HEX.
func cmdlineInitrdDigest(cmdline string) (string, string) {
	for _, f := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(f, initramfs.CmdlineParam+"="); ok {
			v, _, _ = strings.Cut(v, ",")
			if a, d, ok := strings.Cut(v, ":"); ok {
				return a, d
			}
		}
	}
	return "", ""
}

func keylimeHash(algo string) hash.Hash {
	switch algo {
	case "sha1":
		return sha1.New()
	case "sha256":
		return sha256.New()
	case "sha384":
		return sha512.New384()
	case "sha512":
		return sha512.New()
	}
	return nil
}
