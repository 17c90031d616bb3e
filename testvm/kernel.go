package testvm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Environment variables that select the test kernels and the cache.
const (
	// EnvKernel names the kernel (bzImage/vmlinuz) for ordinary VM tests.
	EnvKernel = "IMAKEXEC_KERNEL"
	// EnvIMAKexecKernel names a kernel built with CONFIG_IMA_KEXEC=y.
	EnvIMAKexecKernel = "IMAKEXEC_IMA_KEXEC_KERNEL"
	// EnvCache is the root of the download/build cache (kernels live in
	// $IMAKEXEC_CACHE/kernels). Default: DefaultCache.
	EnvCache = "IMAKEXEC_CACHE"
	// EnvNoFetch, when set, stops FindKernel from running
	// scripts/fetch-kernel.sh.
	EnvNoFetch = "IMAKEXEC_NO_FETCH"
)

// DefaultCache is the cache root when $IMAKEXEC_CACHE is unset. It is outside
// the clone on purpose: kernels are large and shared between clones.
const DefaultCache = "/var/cache/imakexec"

// ModulePath is the module whose root RepoRoot looks for.
const ModulePath = "github.com/imakexec/imakexec"

// imaKexecKernelName is the file name of the CONFIG_IMA_KEXEC=y kernel, both in
// the shared directory next to the clone and in the cache
// (scripts/build-ima-kexec-kernel.sh).
const imaKexecKernelName = "bzImage-6.1-ima-kexec"

// ErrNoKernel is returned (wrapped) when no usable kernel is found.
var ErrNoKernel = errors.New("no test kernel")

// CacheDir returns the cache root: $IMAKEXEC_CACHE or DefaultCache.
func CacheDir() string {
	if d := os.Getenv(EnvCache); d != "" {
		return d
	}
	return DefaultCache
}

// RepoRoot returns the directory of the go.mod of ModulePath, searching from
// the working directory upwards (go test runs in the package directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repo root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(b) == ModulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find repo root: no go.mod of %s above the working directory", ModulePath)
		}
		dir = parent
	}
}

func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// FindKernel returns the Debian cloud kernel for VM tests. In order:
//
//  1. $IMAKEXEC_KERNEL (an error if it names a missing file);
//  2. the newest vmlinuz-*-cloud-amd64 that scripts/fetch-kernel.sh unpacked
//     into $IMAKEXEC_CACHE/kernels;
//  3. the newest /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64
//     installed on the host);
//  4. the output of scripts/fetch-kernel.sh, which downloads it with apt,
//     unless $IMAKEXEC_NO_FETCH is set.
func FindKernel() (string, error) {
	if k := os.Getenv(EnvKernel); k != "" {
		return existing(EnvKernel, k)
	}
	cached, _ := filepath.Glob(filepath.Join(CacheDir(), "kernels", "*", "boot", "vmlinuz-*-cloud-amd64"))
	if k := newest(cached); k != "" {
		return k, nil
	}
	installed, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64")
	if k := newest(installed); k != "" {
		return k, nil
	}
	if os.Getenv(EnvNoFetch) != "" {
		return "", fmt.Errorf("%w: $%s unset, none in %s/kernels or /boot, and $%s forbids fetching",
			ErrNoKernel, EnvKernel, CacheDir(), EnvNoFetch)
	}
	return fetchKernel()
}

func fetchKernel() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoKernel, err)
	}
	script := filepath.Join(root, "scripts", "fetch-kernel.sh")
	var stderr bytes.Buffer
	cmd := exec.Command(script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: scripts/fetch-kernel.sh: %v: %s", ErrNoKernel, err, strings.TrimSpace(stderr.String()))
	}
	return existing("scripts/fetch-kernel.sh output", strings.TrimSpace(string(out)))
}

// FindIMAKexecKernel returns a kernel built with CONFIG_IMA_KEXEC=y
// (no Debian kernel has it). In order: $IMAKEXEC_IMA_KEXEC_KERNEL,
// ../shared/kernels/bzImage-6.1-ima-kexec relative to the repository root,
// then $IMAKEXEC_CACHE/kernels/bzImage-6.1-ima-kexec as written by
// scripts/build-ima-kexec-kernel.sh. It never builds one (that takes minutes).
func FindIMAKexecKernel() (string, error) {
	if k := os.Getenv(EnvIMAKexecKernel); k != "" {
		return existing(EnvIMAKexecKernel, k)
	}
	var tried []string
	if root, err := RepoRoot(); err == nil {
		tried = append(tried, filepath.Join(root, "..", "shared", "kernels", imaKexecKernelName))
	}
	tried = append(tried, filepath.Join(CacheDir(), "kernels", imaKexecKernelName))
	for _, k := range tried {
		if fileExists(k) {
			return filepath.Clean(k), nil
		}
	}
	return "", fmt.Errorf("%w: CONFIG_IMA_KEXEC kernel: $%s unset and none of %s exists (build one with scripts/build-ima-kexec-kernel.sh)",
		ErrNoKernel, EnvIMAKexecKernel, strings.Join(tried, ", "))
}

func existing(what, path string) (string, error) {
	if !fileExists(path) {
		return "", fmt.Errorf("%w: %s names %q, which is not a regular file", ErrNoKernel, what, path)
	}
	return path, nil
}

func fileExists(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

// newest returns the path with the highest version in its base name
// (vmlinuz-6.1.0-57-... > vmlinuz-6.1.0-9-...), or "".
func newest(paths []string) string {
	if len(paths) == 0 {
		return ""
	}
	return slices.MaxFunc(paths, func(a, b string) int {
		return versionCompare(filepath.Base(a), filepath.Base(b))
	})
}

// versionCompare compares strings like sort -V: digit runs numerically.
func versionCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := unicode.IsDigit(rune(a[0])), unicode.IsDigit(rune(b[0]))
		if da && db {
			na, ra := splitDigits(a)
			nb, rb := splitDigits(b)
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			if a[0] < b[0] {
				return -1
			}
			return 1
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func splitDigits(s string) (uint64, string) {
	i := 0
	for i < len(s) && unicode.IsDigit(rune(s[i])) {
		i++
	}
	n, _ := strconv.ParseUint(s[:i], 10, 64)
	return n, s[i:]
}
