#!/bin/bash
# build-ima-kexec-kernel.sh: provide a 6.1 bzImage with CONFIG_IMA_KEXEC=y
# and print its path (the only output on stdout).
#
# A prebuilt kernel is used when there is one, in the order the test harness
# (testvm.FindIMAKexecKernel) looks:
#   1. $IMAKEXEC_IMA_KEXEC_KERNEL
#   2. ../shared/kernels/bzImage-6.1-ima-kexec, relative to the repository root
#   3. ${IMAKEXEC_CACHE:-/var/cache/imakexec}/kernels/bzImage-6.1-ima-kexec
# Otherwise, or with --rebuild, it builds one into (3): apt-get download
# linux-source-6.1, scripts/kconfig-ima-kexec.sh, make bzImage. That takes
# about 7.5 min on 2 cores and needs flex, bison, libelf-dev, libssl-dev, bc,
# gcc and make (installed with apt-get when running as root).
#
# Usage: scripts/build-ima-kexec-kernel.sh [--rebuild]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${IMAKEXEC_CACHE:-/var/cache/imakexec}/kernels
name=bzImage-6.1-ima-kexec
src_pkg=${IMAKEXEC_LINUX_SOURCE:-linux-source-6.1}
out=$cache/$name
log() { echo "build-ima-kexec-kernel: $*" >&2; }

if [ "${1:-}" != "--rebuild" ]; then
	for k in "${IMAKEXEC_IMA_KEXEC_KERNEL:-}" "$root/../shared/kernels/$name" "$out"; do
		if [ -n "$k" ] && [ -f "$k" ]; then
			realpath "$k"
			exit 0
		fi
	done
fi

deps="flex bison libelf-dev libssl-dev bc gcc make xz-utils"
missing=$(for p in $deps; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		log "missing build dependencies: $missing (apt-get install them)"
		exit 1
	fi
	log "installing $missing"
	apt-get install -y -q $missing >&2
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
log "downloading $src_pkg"
apt-get download -q -o APT::Sandbox::User=root "$src_pkg" >&2
dpkg-deb --fsys-tarfile "$src_pkg"_*.deb | tar -x --wildcards './usr/src/linux-source-*.tar.xz'
tarball=$(ls usr/src/linux-source-*.tar.xz)
log "extracting $tarball"
tar -xJf "$tarball"
cd "$(basename "$tarball" .tar.xz)"
"$root/scripts/kconfig-ima-kexec.sh"
log "make bzImage (several minutes)"
make -j"$(nproc)" bzImage >"$work/make.log" 2>&1 || { tail -n 50 "$work/make.log" >&2; exit 1; }
cp .config "$out.config.tmp"
cp arch/x86/boot/bzImage "$out.tmp"
mv "$out.config.tmp" "$out.config"
mv "$out.tmp" "$out"
log "built $out"
echo "$out"
