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
	// EnvNoFetch, when set, stops FindKernel and FindDebian72Kernel from running
	// their fetch scripts, and FindBuiltKernel from building.
	EnvNoFetch = "IMAKEXEC_NO_FETCH"
	// EnvDebian72Kernel names Debian's own 7.2 cloud kernel (no CONFIG_IMA_STAGING, no
	// CONFIG_IMA_KEXEC).
	EnvDebian72Kernel = "IMAKEXEC_DEBIAN72_KERNEL"
	// EnvIMAStagingKernel names a 7.2 kernel built with CONFIG_IMA_STAGING=y and
	// CONFIG_IMA_KEXEC=y.
	EnvIMAStagingKernel = "IMAKEXEC_IMA_STAGING_KERNEL"
)

// Kernels the harness builds itself (scripts/build-kernel.sh KIND): no Debian kernel has
// CONFIG_IMA_KEXEC or CONFIG_IMA_STAGING.
const (
	// Kernel61IMAKexec: linux-source-6.1 with CONFIG_IMA_KEXEC=y (copy at kexec_file_load).
	Kernel61IMAKexec = "6.1-ima-kexec"
	// Kernel72IMAStaging: linux-source-7.2 with CONFIG_IMA_STAGING=y and CONFIG_IMA_KEXEC=y.
	Kernel72IMAStaging = "7.2-ima-staging"
)

// builtEnv is the environment variable that names a prebuilt kernel of each kind.
var builtEnv = map[string]string{Kernel61IMAKexec: EnvIMAKexecKernel, Kernel72IMAStaging: EnvIMAStagingKernel}

// DefaultCache is the cache root when $IMAKEXEC_CACHE is unset. It is outside
// the clone on purpose: kernels are large and shared between clones.
const DefaultCache = "/var/cache/imakexec"

// ModulePath is the module whose root RepoRoot looks for.
const ModulePath = "github.com/imakexec/imakexec"

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
	return runKernelScript(root, "fetch-kernel.sh")
}

// FindIMAKexecKernel returns the 6.1 kernel built with CONFIG_IMA_KEXEC=y; see
// FindBuiltKernel.
func FindIMAKexecKernel() (string, error) { return FindBuiltKernel(Kernel61IMAKexec) }

// FindIMAStagingKernel returns the 7.2 kernel built with CONFIG_IMA_STAGING=y and
// CONFIG_IMA_KEXEC=y; see FindBuiltKernel.
func FindIMAStagingKernel() (string, error) { return FindBuiltKernel(Kernel72IMAStaging) }

// FindBuiltKernel returns a kernel of one of the kinds the harness builds (Kernel61IMAKexec,
// Kernel72IMAStaging). In order: its environment variable ($IMAKEXEC_IMA_KEXEC_KERNEL,
// $IMAKEXEC_IMA_STAGING_KERNEL), ../shared/kernels/bzImage-KIND relative to the
// repository root, $IMAKEXEC_CACHE/kernels/bzImage-KIND; else it runs
// scripts/build-kernel.sh KIND, which builds it into the cache (6-10 minutes on 2 cores,
// once; the script holds a lock so that two test binaries never build at once), unless
// $IMAKEXEC_NO_FETCH is set.
func FindBuiltKernel(kind string) (string, error) {
	env, ok := builtEnv[kind]
	if !ok {
		return "", fmt.Errorf("%w: unknown kernel kind %q", ErrNoKernel, kind)
	}
	if k := os.Getenv(env); k != "" {
		return existing(env, k)
	}
	name := "bzImage-" + kind
	var tried []string
	root, rootErr := RepoRoot()
	if d := sharedDir(root, rootErr); d != "" {
		tried = append(tried, filepath.Join(d, "kernels", name))
	}
	tried = append(tried, filepath.Join(CacheDir(), "kernels", name))
	for _, k := range tried {
		if fileExists(k) {
			return filepath.Clean(k), nil
		}
	}
	if os.Getenv(EnvNoFetch) != "" || rootErr != nil {
		return "", fmt.Errorf("%w: %s kernel: $%s unset, none of %s exists, and $%s forbids building (scripts/build-kernel.sh %s builds one)",
			ErrNoKernel, kind, env, strings.Join(tried, ", "), EnvNoFetch, kind)
	}
	return runKernelScript(root, "build-kernel.sh", kind)
}

// EnvShared names the team's shared folder whose kernels/ FindBuiltKernel looks in first
// (default: ../shared beside the repository root).
const EnvShared = "IMAKEXEC_SHARED"

// SharedDir is the team's shared folder: $IMAKEXEC_SHARED, else ../shared beside the
// repository root ("" when the root cannot be found). It may not exist.
func SharedDir() string {
	root, err := RepoRoot()
	return sharedDir(root, err)
}

func sharedDir(root string, rootErr error) string {
	if d := os.Getenv(EnvShared); d != "" {
		return d
	}
	if rootErr != nil {
		return ""
	}
	return filepath.Join(root, "..", "shared")
}

// FindDebian72Kernel returns Debian's own 7.2 cloud kernel (CONFIG_IMA=y, CONFIG_IMA_STAGING
// and CONFIG_IMA_KEXEC not set). In order: $IMAKEXEC_DEBIAN72_KERNEL, the newest
// vmlinuz-7.2.*-cloud-amd64 in $IMAKEXEC_CACHE/kernels/debian-7.2/, else the output of
// scripts/fetch-debian72-kernel.sh (apt from trixie, trixie-backports and sid through a
// private sources list), unless $IMAKEXEC_NO_FETCH is set.
func FindDebian72Kernel() (string, error) {
	if k := os.Getenv(EnvDebian72Kernel); k != "" {
		return existing(EnvDebian72Kernel, k)
	}
	cached, _ := filepath.Glob(filepath.Join(CacheDir(), "kernels", "debian-7.2", "*", "vmlinuz-7.2.*-cloud-amd64"))
	if k := newest(cached); k != "" {
		return k, nil
	}
	if os.Getenv(EnvNoFetch) != "" {
		return "", fmt.Errorf("%w: Debian 7.2 kernel: $%s unset, none in %s/kernels/debian-7.2, and $%s forbids fetching",
			ErrNoKernel, EnvDebian72Kernel, CacheDir(), EnvNoFetch)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoKernel, err)
	}
	return runKernelScript(root, "fetch-debian72-kernel.sh")
}

// runKernelScript runs scripts/NAME ARGS and returns the path it prints.
func runKernelScript(root, name string, args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "scripts", name), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%w: scripts/%s %s: %v: %s", ErrNoKernel, name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return existing("scripts/"+name+" output", strings.TrimSpace(string(out)))
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
