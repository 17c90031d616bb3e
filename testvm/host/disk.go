package host

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imakexec/imakexec/testvm"
)

// Variant is the initrd generator of the guest image.
type Variant string

const (
	InitramfsTools Variant = "initramfs-tools"
	Dracut         Variant = "dracut"
)

// Disk is a prepared guest: a raw ext4 root filesystem and the kernel and initrd from its
// /boot.
type Disk struct {
	Image, Kernel, Initrd string
	Release               string // kernel release of Kernel
	Releases              []string
	PrepTime              time.Duration
}

// DiskOptions choose what goes into the guest besides imakexec.
type DiskOptions struct {
	Variant Variant
	// KexecPolicy installs guest/ima-policy-kexec as /etc/ima/ima-policy, which systemd
	// loads at boot: tcb's rules plus KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK and
	// KEXEC_CMDLINE.
	KexecPolicy bool
	// NewerKernel installs Debian's newest 7.2 cloud kernel (trixie-backports or sid,
	// scripts/fetch-host-kernel-debs.sh) next to bookworm's 6.1, for a live update into it.
	NewerKernel bool
}

var (
	debOnce sync.Once
	debPath string
	debErr  error
)

// buildDeb runs `make deb` once per test binary and returns the package.
func buildDeb(root string) (string, error) {
	debOnce.Do(func() {
		// --no-print-directory: under `make test` the sub-make would end its output with
		// "make[1]: Leaving directory ...", not the package's path.
		out, err := run(root, "make", "--no-print-directory", "deb")
		if err != nil {
			debErr = fmt.Errorf("make deb: %v\n%s", err, out)
			return
		}
		lines := strings.Fields(strings.TrimSpace(out))
		if len(lines) == 0 || !strings.HasSuffix(lines[len(lines)-1], ".deb") {
			debErr = fmt.Errorf("make deb printed no package:\n%s", out)
			return
		}
		debPath = filepath.Join(root, lines[len(lines)-1])
	})
	return debPath, debErr
}

func run(dir string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

// RequireDisk checks what preparing a disk needs, skipping (or failing in CI) with the
// reason when something is missing.
func RequireDisk(t *testing.T) {
	t.Helper()
	var missing []string
	for _, tool := range []string{"mmdebstrap", "mke2fs", "dpkg-deb", "unshare", "chroot", "tar", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		skipOrFail(t, "not in $PATH: "+strings.Join(missing, ", ")+" (scripts/install-deps.sh installs mmdebstrap and e2fsprogs)")
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "preparing the Debian root filesystem needs root (chroot, device nodes)")
	}
}

func skipOrFail(t *testing.T, why string) {
	t.Helper()
	if testvm.InCI() {
		t.Fatalf("systemd-host VM test prerequisite missing in CI: %s", why)
	}
	t.Skip(why)
}

// PrepareDisk builds (or takes from the cache) the root tree, installs imakexec from the
// .deb and the guest side, and makes the disk image in dir.
func PrepareDisk(ctx context.Context, dir string, o DiskOptions) (*Disk, error) {
	start := time.Now()
	root, err := testvm.RepoRoot()
	if err != nil {
		return nil, err
	}
	if o.Variant == "" {
		o.Variant = InitramfsTools
	}
	out, err := run(root, filepath.Join(root, "scripts", "build-host-image.sh"), string(o.Variant))
	if err != nil {
		return nil, fmt.Errorf("build-host-image.sh: %v\n%s", err, out)
	}
	f := strings.Fields(strings.TrimSpace(out))
	tarball := f[len(f)-1]
	deb, err := buildDeb(root)
	if err != nil {
		return nil, err
	}
	tree := filepath.Join(dir, "root")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tree)
	if out, err := run(dir, "tar", "-xpf", tarball, "-C", tree, "--numeric-owner"); err != nil {
		return nil, fmt.Errorf("unpack %s: %v\n%s", tarball, err, out)
	}
	guest := filepath.Join(root, "testvm", "host", "guest")
	copies := []struct {
		src, dst string
		mode     os.FileMode
	}{
		{deb, "tmp/imakexec.deb", 0o644},
		{filepath.Join(guest, "imakexec-testvm"), "usr/local/sbin/imakexec-testvm", 0o755},
		{filepath.Join(guest, "imakexec-testvm.service"), "etc/systemd/system/imakexec-testvm.service", 0o644},
		{filepath.Join(guest, "imakexec-testvm-tamper.service"), "etc/systemd/system/imakexec-testvm-tamper.service", 0o644},
		{filepath.Join(guest, "drain-timer.conf"), "etc/systemd/system/imakexec-drain.timer.d/testvm.conf", 0o644},
	}
	if o.KexecPolicy {
		copies = append(copies, struct {
			src, dst string
			mode     os.FileMode
		}{filepath.Join(guest, "ima-policy-kexec"), "etc/ima/ima-policy", 0o644})
	}
	for _, c := range copies {
		b, err := os.ReadFile(c.src)
		if err != nil {
			return nil, err
		}
		dst := filepath.Join(tree, c.dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, b, c.mode); err != nil {
			return nil, err
		}
	}
	if o.NewerKernel {
		out, err := run(root, filepath.Join(root, "scripts", "fetch-host-kernel-debs.sh"))
		if err != nil {
			return nil, fmt.Errorf("fetch-host-kernel-debs.sh: %v\n%s", err, out)
		}
		f := strings.Fields(strings.TrimSpace(out))
		debs, _ := filepath.Glob(filepath.Join(f[len(f)-1], "*.deb"))
		if err := os.MkdirAll(filepath.Join(tree, "tmp", "k"), 0o755); err != nil {
			return nil, err
		}
		for _, deb := range debs {
			b, err := os.ReadFile(deb)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(tree, "tmp", "k", filepath.Base(deb)), b, 0o644); err != nil {
				return nil, err
			}
		}
	}
	// dpkg -i in a private mount namespace: proc and sysfs for the maintainer scripts
	// (update-initramfs) vanish with it.
	script := `set -e
mount -t proc proc "$1/proc"
mount -t sysfs sys "$1/sys"
chroot "$1" dpkg -i /tmp/imakexec.deb
if [ -d "$1/tmp/k" ]; then
	# On bookworm the 7.2 image's postinst fails in linux-run-hooks (run-parts: missing
	# operand): the image (in /usr/lib/modules/REL/vmlinuz) and the modules are unpacked;
	# the copy to /boot and the initrd are then made by hand.
	chroot "$1" sh -c 'dpkg -i /tmp/k/linux-base_*.deb && dpkg -i /tmp/k/*.deb' || {
		echo "NOTE: the 7.2 kernel's maintainer scripts failed; making its initrd with update-initramfs"
		for k in "$1"/usr/lib/modules/7.*/vmlinuz; do
			rel=${k%/vmlinuz}; rel=${rel##*/}
			cp "$k" "$1/boot/vmlinuz-$rel"
			cp "${k%/vmlinuz}/config" "$1/boot/config-$rel"
			chroot "$1" update-initramfs -c -k "$rel"
		done
	}
	rm -rf "$1/tmp/k"
fi
chroot "$1" systemctl enable imakexec-testvm.service imakexec-testvm-tamper.service
rm -f "$1/tmp/imakexec.deb"`
	if out, err := run(dir, "unshare", "--mount", "--fork", "sh", "-c", script, "sh", tree); err != nil {
		return nil, fmt.Errorf("install imakexec in the guest: %v\n%s", err, out)
	}
	d := &Disk{Image: filepath.Join(dir, "root.img")}
	kernels, _ := filepath.Glob(filepath.Join(tree, "boot", "vmlinuz-*"))
	sort.Strings(kernels)
	if len(kernels) == 0 {
		return nil, fmt.Errorf("no kernel in the guest's /boot")
	}
	for _, k := range kernels {
		d.Releases = append(d.Releases, strings.TrimPrefix(filepath.Base(k), "vmlinuz-"))
	}
	d.Release = d.Releases[0]
	d.Kernel, d.Initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	for _, c := range [][2]string{{"boot/vmlinuz-" + d.Release, d.Kernel}, {"boot/initrd.img-" + d.Release, d.Initrd}} {
		b, err := os.ReadFile(filepath.Join(tree, c[0]))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(c[1], b, 0o644); err != nil {
			return nil, err
		}
	}
	if out, err := run(dir, "mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", tree, "-F", d.Image, "3G"); err != nil {
		return nil, fmt.Errorf("mke2fs: %v\n%s", err, out)
	}
	d.PrepTime = time.Since(start)
	return d, nil
}
