package testvm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersionCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int // sign
	}{
		{"vmlinuz-6.1.0-57-cloud-amd64", "vmlinuz-6.1.0-9-cloud-amd64", 1},
		{"vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.12.0-1-cloud-amd64", -1},
		{"vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-9-cloud-amd64", 0},
		{"a", "ab", -1},
	} {
		got := versionCompare(tc.a, tc.b)
		if (got > 0) != (tc.want > 0) || (got < 0) != (tc.want < 0) {
			t.Errorf("versionCompare(%q, %q) = %d, want sign %d", tc.a, tc.b, got, tc.want)
		}
	}
	if got := newest([]string{"/x/vmlinuz-6.1.0-9-cloud-amd64", "/y/vmlinuz-6.1.0-57-cloud-amd64", "/z/vmlinuz-6.1.0-10-cloud-amd64"}); got != "/y/vmlinuz-6.1.0-57-cloud-amd64" {
		t.Errorf("newest = %q", got)
	}
}

func TestFindKernelEnv(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(k, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvKernel, k)
	t.Setenv(EnvIMAKexecKernel, k)
	if got, err := FindKernel(); err != nil || got != k {
		t.Errorf("FindKernel = %q, %v; want %q", got, err, k)
	}
	if got, err := FindIMAKexecKernel(); err != nil || got != k {
		t.Errorf("FindIMAKexecKernel = %q, %v; want %q", got, err, k)
	}
	t.Setenv(EnvKernel, filepath.Join(dir, "missing"))
	if _, err := FindKernel(); !errors.Is(err, ErrNoKernel) {
		t.Errorf("FindKernel with a missing $%s: err = %v, want ErrNoKernel", EnvKernel, err)
	}
}

func TestFindKernelCache(t *testing.T) {
	cache := t.TempDir()
	t.Setenv(EnvKernel, "")
	t.Setenv(EnvCache, cache)
	t.Setenv(EnvNoFetch, "1")
	var want string
	for _, v := range []string{"6.1.0-9", "6.1.0-57"} {
		d := filepath.Join(cache, "kernels", "linux-image-"+v+"-cloud-amd64_x", "boot")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		want = filepath.Join(d, "vmlinuz-"+v+"-cloud-amd64")
		if err := os.WriteFile(want, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := FindKernel(); err != nil || got != want {
		t.Errorf("FindKernel = %q, %v; want %q", got, err, want)
	}
}

func TestRepoRoot(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "testvm", "kernel.go")); err != nil {
		t.Errorf("RepoRoot = %q: %v", root, err)
	}
}

func TestArchiveName(t *testing.T) {
	for in, want := range map[string]string{"/etc/x": "etc/x", "init": "init", "bin/hello": "bin/hello"} {
		if got, err := archiveName(in); err != nil || got != want {
			t.Errorf("archiveName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "/", "..", "../x", "a/../b", "a//b", "a/"} {
		if got, err := archiveName(bad); err == nil {
			t.Errorf("archiveName(%q) = %q, want an error", bad, got)
		}
	}
}

func TestShellQuote(t *testing.T) {
	r := &Result{Args: []string{"qemu", "-append", "console=ttyS0 x='y'", "file:/a/b"}}
	if got, want := r.CommandLine(), `qemu -append 'console=ttyS0 x='\''y'\''' file:/a/b`; got != want {
		t.Errorf("CommandLine = %s, want %s", got, want)
	}
}

func TestMachineArgs(t *testing.T) {
	m := &Machine{Kernel: "k", Initramfs: "i", Append: "ima_hash=sha256"}
	args := m.args("data.log", &TPM{Socket: "sock"})
	want := map[string]bool{"-accel": false, "tcg": false, "-no-reboot": false, "file:data.log": false,
		"console=ttyS0 panic=-1 ima_hash=sha256": false, "tpm-tis,tpmdev=tpm0": false}
	for _, a := range args {
		if _, ok := want[a]; ok {
			want[a] = true
		}
	}
	for a, seen := range want {
		if !seen {
			t.Errorf("QEMU args lack %q: %q", a, args)
		}
	}
}

// TestFindKernelsOfEachKind: the 7.2 kernels are found in the cache layout their scripts
// write, never mistaken for one another or for the Debian 6.1 kernel, and a missing
// kernel with fetching forbidden is ErrNoKernel naming the script that would make it.
func TestFindKernelsOfEachKind(t *testing.T) {
	cache := t.TempDir()
	for _, e := range []string{EnvKernel, EnvIMAKexecKernel, EnvIMAStagingKernel, EnvDebian72Kernel} {
		t.Setenv(e, "")
	}
	t.Setenv(EnvCache, cache)
	t.Setenv(EnvNoFetch, "1")
	t.Setenv(EnvShared, t.TempDir()) // a shared folder without kernels
	if _, err := FindIMAStagingKernel(); !errors.Is(err, ErrNoKernel) || !strings.Contains(err.Error(), "build-kernel.sh "+Kernel72IMAStaging) {
		t.Errorf("FindIMAStagingKernel in an empty cache: %v", err)
	}
	if _, err := FindDebian72Kernel(); !errors.Is(err, ErrNoKernel) {
		t.Errorf("FindDebian72Kernel in an empty cache: %v", err)
	}
	write := func(p string) string {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	staging := write(filepath.Join(cache, "kernels", "bzImage-"+Kernel72IMAStaging))
	var deb string
	for _, v := range []string{"7.2.9+deb13", "7.2.13+deb14"} {
		deb = write(filepath.Join(cache, "kernels", "debian-7.2", "linux-binary-"+v+"-cloud-amd64_x", "vmlinuz-"+v+"-cloud-amd64"))
	}
	if got, err := FindIMAStagingKernel(); err != nil || got != staging {
		t.Errorf("FindIMAStagingKernel = %q, %v; want %q", got, err, staging)
	}
	if got, err := FindDebian72Kernel(); err != nil || got != deb {
		t.Errorf("FindDebian72Kernel = %q, %v; want %q", got, err, deb)
	}
	if got, err := FindIMAKexecKernel(); err == nil && got == staging {
		t.Errorf("FindIMAKexecKernel returned the 7.2 kernel")
	}
	if got, err := FindKernel(); err == nil && (got == deb || got == staging) {
		t.Errorf("FindKernel (Debian 6.1) returned a 7.2 kernel %q", got)
	}
}
