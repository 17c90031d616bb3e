package serialize

import (
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"strconv"
	"strings"
)

// TPM algorithm identifiers (TCG Algorithm Registry) for the banks a TPM 2.0 may have.
const (
	AlgSHA1     uint16 = 0x0004
	AlgSHA256   uint16 = 0x000B
	AlgSHA384   uint16 = 0x000C
	AlgSHA512   uint16 = 0x000D
	AlgSM3_256  uint16 = 0x0012
	AlgSHA3_256 uint16 = 0x0027
	AlgSHA3_384 uint16 = 0x0028
	AlgSHA3_512 uint16 = 0x0029
)

// Bank is one PCR bank of a TPM: its algorithm, its digest size and whether the kernel
// computes real template digests with it.
//
// The kernel maps a TPM algorithm to a kernel hash only for SHA1, SHA256, SHA384, SHA512 and
// SM3 (tpm2_hash_map). For every other bank it extends the SHA1 template digest padded with
// zeros to the bank size (ima_calc_field_array_hash; docs/kernel.md, "Template digest"), and since 7.1 names its list files `tpm_alg_<hex>`.
type Bank struct {
	Name   string // file-name form: "sha1", "sha256", ..., "sm3", "tpm_alg_27"
	TPMAlg uint16
	Size   int
	// hash is the hash the kernel uses for template digests in this bank; 0 when the
	// kernel has none (padded SHA1).
	hash crypto.Hash
	// sm3 marks the one kernel-known hash this package cannot compute.
	sm3 bool
}

// Predefined banks.
var (
	SHA1   = Bank{Name: "sha1", TPMAlg: AlgSHA1, Size: sha1.Size, hash: crypto.SHA1}
	SHA256 = Bank{Name: "sha256", TPMAlg: AlgSHA256, Size: sha256.Size, hash: crypto.SHA256}
	SHA384 = Bank{Name: "sha384", TPMAlg: AlgSHA384, Size: sha512.Size384, hash: crypto.SHA384}
	SHA512 = Bank{Name: "sha512", TPMAlg: AlgSHA512, Size: sha512.Size, hash: crypto.SHA512}
	SM3    = Bank{Name: "sm3", TPMAlg: AlgSM3_256, Size: 32, sm3: true}
)

// sizes of TPM algorithms the kernel has no template hash for (extended as padded SHA1).
var unknownAlgSizes = map[uint16]int{
	AlgSHA3_256: 32,
	AlgSHA3_384: 48,
	AlgSHA3_512: 64,
}

// KernelHash reports whether the kernel computes real template digests in this bank
// (5.8+); when false it extends padded SHA1.
func (b Bank) KernelHash() bool { return b.hash != 0 || b.sm3 }

// String returns the bank name.
func (b Bank) String() string { return b.Name }

// BankByTPMAlg returns the bank for a TPM algorithm ID. size is used for algorithms
// unknown to this package (7.1 kernels report a bank's digest_size); pass 0 to refuse them.
func BankByTPMAlg(alg uint16, size int) (Bank, error) {
	for _, b := range []Bank{SHA1, SHA256, SHA384, SHA512, SM3} {
		if b.TPMAlg == alg {
			return b, nil
		}
	}
	if s, ok := unknownAlgSizes[alg]; ok {
		size = s
	}
	if size <= 0 || size > 64 {
		return Bank{}, fmt.Errorf("%w: TPM algorithm 0x%04x with unknown digest size", ErrUnknownBank, alg)
	}
	if size < 20 {
		return Bank{}, fmt.Errorf("%w: TPM algorithm 0x%04x digest size %d is smaller than SHA1", ErrUnknownBank, alg, size)
	}
	return Bank{Name: fmt.Sprintf("tpm_alg_%x", alg), TPMAlg: alg, Size: size}, nil
}

// ParseBank accepts the names the kernel uses in list file names and in d-ng prefixes
// ("sha1", "sha256", "sha384", "sha512", "sm3", "tpm_alg_<hex>") plus a few spellings
// from other tools ("sha3_256", "sha3-256", "sm3_256").
func ParseBank(name string) (Bank, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	switch n {
	case "sha1":
		return SHA1, nil
	case "sha256":
		return SHA256, nil
	case "sha384":
		return SHA384, nil
	case "sha512":
		return SHA512, nil
	case "sm3", "sm3_256", "sm3-256":
		return SM3, nil
	case "sha3_256", "sha3-256":
		return BankByTPMAlg(AlgSHA3_256, 0)
	case "sha3_384", "sha3-384":
		return BankByTPMAlg(AlgSHA3_384, 0)
	case "sha3_512", "sha3-512":
		return BankByTPMAlg(AlgSHA3_512, 0)
	}
	if hx, ok := strings.CutPrefix(n, "tpm_alg_"); ok {
		v, err := strconv.ParseUint(hx, 16, 16)
		if err != nil {
			return Bank{}, fmt.Errorf("%w: %q", ErrUnknownBank, name)
		}
		return BankByTPMAlg(uint16(v), 0)
	}
	return Bank{}, fmt.Errorf("%w: %q", ErrUnknownBank, name)
}

// ParseBanks parses a comma-separated bank list such as "sha1,sha256".
func ParseBanks(list string) ([]Bank, error) {
	var out []Bank
	seen := map[string]bool{}
	for _, f := range strings.Split(list, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		b, err := ParseBank(f)
		if err != nil {
			return nil, err
		}
		if seen[b.Name] {
			continue
		}
		seen[b.Name] = true
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty bank list", ErrUnknownBank)
	}
	return out, nil
}

// Scheme is how a kernel extends template digests into non-SHA1 banks.
type Scheme int

const (
	// SchemeHash is the 5.8+ scheme: each bank gets the template digest computed with
	// its own hash (padded SHA1 only for banks the kernel has no hash for).
	SchemeHash Scheme = iota
	// SchemePad is the 5.1-5.7 scheme: every bank gets the SHA1 template digest padded
	// with zeros, and violations 0xFF x20 padded with zeros.
	SchemePad
)

func (s Scheme) String() string {
	if s == SchemePad {
		return "pad"
	}
	return "hash"
}

// ParseScheme parses "hash" or "pad".
func ParseScheme(s string) (Scheme, error) {
	switch s {
	case "hash", "":
		return SchemeHash, nil
	case "pad":
		return SchemePad, nil
	}
	return 0, fmt.Errorf("unknown extend scheme %q (want hash or pad)", s)
}

// sum computes the bank's hash of data into dst (len(dst) >= b.Size) without allocating.
// It must only be called for banks with a kernel hash this package implements.
func (b *Bank) sum(dst, data []byte) {
	switch b.hash {
	case crypto.SHA1:
		s := sha1.Sum(data)
		copy(dst, s[:])
	case crypto.SHA256:
		s := sha256.Sum256(data)
		copy(dst, s[:])
	case crypto.SHA384:
		s := sha512.Sum384(data)
		copy(dst, s[:])
	case crypto.SHA512:
		s := sha512.Sum512(data)
		copy(dst, s[:])
	default:
		panic("serialize: sum on bank without hash " + b.Name)
	}
}

// checkComputable returns an error for banks whose kernel hash this package cannot compute.
func (b Bank) checkComputable() error {
	if b.sm3 {
		return fmt.Errorf("%w: the kernel extends real SM3 template digests into the sm3 bank, and SM3 is not implemented", ErrUnknownBank)
	}
	if b.Size == 0 {
		return fmt.Errorf("%w: bank without a digest size", ErrUnknownBank)
	}
	return nil
}

// Sum returns the bank's hash of data, for banks whose hash this package implements (SHA1,
// SHA256, SHA384, SHA512).
func (b Bank) Sum(data []byte) ([]byte, error) {
	if b.hash == 0 {
		return nil, fmt.Errorf("%w: no hash for bank %s", ErrUnknownBank, b.Name)
	}
	out := make([]byte, b.Size)
	b.sum(out, data)
	return out, nil
}
