package initramfs

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"hash"
	"slices"
	"strings"
)

// supportedIMAHash are the ima_hash algorithms imakexec can compute.
var supportedIMAHash = map[string]func() hash.Hash{
	"sha1": sha1.New, "sha256": sha256.New, "sha384": sha512.New384, "sha512": sha512.New,
}

// template fields whose value for the window records can be computed (docs/kernel.md, "Templates"; ima_template_lib.c).
var predictableFields = map[string]bool{
	"d": true, "n": true, "d-ng": true, "n-ng": true, "d-ngv2": true, "sig": true, "buf": true,
	"iuid": true, "igid": true, "imode": true, "evmsig": true, "d-modsig": true, "modsig": true,
}

var builtinTemplates = map[string]string{
	"ima": "d|n", "ima-ng": "d-ng|n-ng", "ima-ngv2": "d-ngv2|n-ng", "ima-sig": "d-ng|n-ng|sig",
	"ima-sigv2": "d-ngv2|n-ng|sig", "ima-buf": "d-ng|n-ng|buf", "ima-modsig": "d-ng|n-ng|sig|d-modsig|modsig",
	"evm-sig": "d-ng|n-ng|evmsig|xattrnames|xattrlengths|xattrvalues|iuid|igid|imode",
}

func unpredictableFields(template string) []string {
	format := template
	if f, ok := builtinTemplates[template]; ok {
		format = f
	} else if !strings.Contains(template, "|") && !predictableFields[template] {
		return []string{"(unknown template " + template + ")"}
	}
	var bad []string
	for _, f := range strings.Split(format, "|") {
		if !predictableFields[f] {
			bad = append(bad, f)
		}
	}
	return bad
}

func templatesUse(templates []string, field string) bool {
	for _, t := range templates {
		format := t
		if f, ok := builtinTemplates[t]; ok {
			format = f
		}
		for _, f := range strings.Split(format, "|") {
			if f == field {
				return true
			}
		}
	}
	return false
}

// windowAlgos returns the algorithms the kernel image and the initrd are hashed in: the
// ima_hash algorithm (the digest of d-ng and of the window records, docs/kernel.md "Which algorithm a
// digest field names"), plus sha1
// when a template in use has the d field (the "ima" template; the kernel hashes again with
// SHA1 for it), and sha256 when ima_hash is not one imakexec computes (the run is refused
// unless forced; the digest is then informative only). A digest in any other algorithm is
// in no record and only costs time: hashing the kernel in all four was most of imakexec
// kexec's time under QEMU TCG.
func windowAlgos(algo string, templates []string) []string {
	var out []string
	add := func(name string) {
		if supportedIMAHash[name] != nil && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	add(algo)
	if templatesUse(templates, "d") {
		add("sha1")
	}
	if len(out) == 0 {
		add("sha256")
	}
	return out
}

// onlyIMATemplate reports whether every template in use is "ima" (then the kernel does
// not read security.ima to choose the hash, process_measurement), false when unknown.
func onlyIMATemplate(templates []string) bool {
	if len(templates) == 0 {
		return false
	}
	for _, t := range templates {
		if t != "ima" {
			return false
		}
	}
	return true
}

// hashAlgoNames are the kernel's hash_algo_name[] (crypto/hash_info.c), indexed by enum
// hash_algo (include/uapi/linux/hash_info.h).
var hashAlgoNames = []string{
	"md4", "md5", "sha1", "rmd160", "sha256", "sha384", "sha512", "sha224", "rmd128", "rmd256",
	"rmd320", "wp256", "wp384", "wp512", "tgr128", "tgr160", "tgr192", "sm3", "streebog256",
	"streebog512", "sha3-256", "sha3-384", "sha3-512",
}

// security.ima types (enum evm_ima_xattr_type, security/integrity/integrity.h).
const (
	xattrDigest    = 0x01 // IMA_XATTR_DIGEST: SHA1 or MD5, by length
	xattrDigsig    = 0x03 // EVM_IMA_XATTR_DIGSIG: signature_v2_hdr
	xattrDigestNG  = 0x04 // IMA_XATTR_DIGEST_NG: algorithm in the second byte
	xattrVerity    = 0x06 // IMA_VERITY_DIGSIG: signature_v2_hdr, version 3
	sigV2HeaderLen = 9    // sizeof(struct signature_v2_hdr)
)

// XattrHashAlgo returns the hash algorithm the kernel uses for a file whose security.ima
// is x, or "" when x names none and ima_hash applies. It follows ima_get_hash_algo
// (ima_appraise.c, 6.1 to 7.2): signatures name their digest's algorithm in
// signature_v2_hdr.hash_algo, an IMA_XATTR_DIGEST_NG in its first data byte, a legacy
// IMA_XATTR_DIGEST is SHA1 (21 bytes) or MD5.
func XattrHashAlgo(x []byte) string {
	if len(x) < 2 {
		return ""
	}
	name := func(i int) string {
		if i >= 0 && i < len(hashAlgoNames) {
			return hashAlgoNames[i]
		}
		return ""
	}
	switch x[0] {
	case xattrVerity:
		if x[1] != 3 || len(x) <= sigV2HeaderLen {
			return ""
		}
		return name(int(x[2]))
	case xattrDigsig:
		if (x[1] != 2 && x[1] != 3) || len(x) <= sigV2HeaderLen {
			return ""
		}
		return name(int(x[2]))
	case xattrDigestNG:
		return name(int(x[1]))
	case xattrDigest:
		switch {
		case len(x) == 21 && (x[17] != 0 || x[18] != 0 || x[19] != 0 || x[20] != 0):
			return "sha1"
		case len(x) == 21 || len(x) == 17:
			return "md5"
		}
	}
	return ""
}
