#!/bin/bash
# build-host-image.sh [initramfs-tools|dracut]: a Debian 12 root filesystem for the
# systemd-host scenario (testvm/host), built from Debian's packages with mmdebstrap: systemd
# as pid 1, the cloud kernel and the initrd that initramfs-tools (or dracut) makes for it,
# kexec-tools. Prints the path of a tarball cached under $IMAKEXEC_CACHE (default
# /var/cache/imakexec)/hostimage, named after a hash of this recipe: built once, rebuilt when
# the recipe changes. imakexec itself is not in it: the scenario installs the .deb per run.
# The mirror is read from /etc/apt/sources.list.d/*.sources (else deb.debian.org). Needs root.
set -euo pipefail
variant=${1:-initramfs-tools}
case "$variant" in initramfs-tools | dracut) ;; *) echo "usage: $0 [initramfs-tools|dracut]" >&2; exit 2 ;; esac
cache=${IMAKEXEC_CACHE:-/var/cache/imakexec}/hostimage
here=$(cd "$(dirname "$0")" && pwd)
key=$( (cat "$here/build-host-image.sh"; echo "$variant") | sha256sum | cut -c1-16)
out="$cache/debian12-$variant-$key.tar"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
pkgs=systemd,systemd-sysv,udev,kexec-tools,linux-image-cloud-amd64,e2fsprogs,kmod,procps,coreutils,util-linux
if [ "$variant" = dracut ]; then pkgs="$pkgs,dracut"; else pkgs="$pkgs,initramfs-tools"; fi
tmp="$out.tmp.$$.tar"
trap 'rm -f "$tmp"' EXIT
# The initrd holds only the modules a virtio VM needs (MODULES=list): a small initrd is
# hashed quickly by kexec purgatory under TCG. kexec-tools must not load a kernel itself
# (LOAD_KEXEC=false): imakexec kexec --load-only does.
mmdebstrap --format=tar --variant=apt --include="$pkgs" \
	--essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/dracut.conf.d" "$1/etc/default"
		echo MODULES=list > "$1/etc/initramfs-tools/conf.d/testvm.conf"
		printf "%s\n" virtio_pci virtio_blk ext4 > "$1/etc/initramfs-tools/modules"
		echo "hostonly=no" > "$1/etc/dracut.conf.d/testvm.conf"
		echo "add_drivers+=\" virtio_pci virtio_blk ext4 \"" >> "$1/etc/dracut.conf.d/testvm.conf"
		printf "LOAD_KEXEC=false\nUSE_GRUB_CONFIG=false\n" > "$1/etc/default/kexec"' \
	--customize-hook='echo imakexec-host > "$1/etc/hostname"
		echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$1/etc/fstab"
		chroot "$1" passwd -d root >/dev/null
		chroot "$1" systemctl mask getty@tty1.service serial-getty@ttyS0.service serial-getty@ttyS1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
		rm -f "$1/etc/machine-id"; : > "$1/etc/machine-id"' \
	bookworm "$tmp" "$mirror"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
