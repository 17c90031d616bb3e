#!/bin/bash
# build-kernel.sh: provide one of the kernels the VM tests build themselves
# (no Debian kernel has CONFIG_IMA_KEXEC or CONFIG_IMA_STAGING) and print its
# path (the only output on stdout).
#
#   KIND              source package        config script
#   6.1-ima-kexec     linux-source-6.1      scripts/kconfig-ima-kexec.sh      (host's apt)
#   7.2-ima-staging   linux-source-7.2      scripts/kconfig-ima-staging-72.sh (private apt:
#                                                                            trixie-backports/sid)
#
# A prebuilt kernel is used when there is one, in the order the test harness
# (testvm.FindBuiltKernel) looks:
#   1. $IMAKEXEC_<KIND>_KERNEL (e.g. IMAKEXEC_IMA_KEXEC_KERNEL, IMAKEXEC_IMA_STAGING_KERNEL)
#   2. $IMAKEXEC_SHARED/kernels/bzImage-KIND (default: ../shared beside the repository root)
#   3. ${IMAKEXEC_CACHE:-/var/cache/imakexec}/kernels/bzImage-KIND
# Otherwise, or with --rebuild, it builds one into (3): apt-get download of the
# source package (newest version, globbed), the config script, make bzImage.
# That takes 6-10 min on 2 cores and needs flex, bison, libelf-dev, libssl-dev,
# bc, gcc, make and xz-utils (installed with apt-get when running as root).
# Builds are serialised with flock: a second run waits and then finds the kernel.
#
# Usage: scripts/build-kernel.sh [--rebuild] KIND
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/private-apt.sh"
rebuild=0
if [ "${1:-}" = "--rebuild" ]; then rebuild=1; shift; fi
kind=${1:?usage: build-kernel.sh [--rebuild] 6.1-ima-kexec|7.2-ima-staging}
case "$kind" in
6.1-ima-kexec) src_pkg=linux-source-6.1 kconfig=kconfig-ima-kexec.sh env=IMAKEXEC_IMA_KEXEC_KERNEL private=0 ;;
7.2-ima-staging) src_pkg=linux-source-7.2 kconfig=kconfig-ima-staging-72.sh env=IMAKEXEC_IMA_STAGING_KERNEL private=1 ;;
*) echo "build-kernel: unknown kernel $kind" >&2; exit 2 ;;
esac
cache=$IMAKEXEC_CACHE/kernels
name=bzImage-$kind
out=$cache/$name
log() { echo "build-kernel $kind: $*" >&2; }

find_prebuilt() {
	local k
	for k in "${!env:-}" "${IMAKEXEC_SHARED:-$root/../shared}/kernels/$name" "$out"; do
		if [ -n "$k" ] && [ -f "$k" ]; then
			realpath "$k"
			return 0
		fi
	done
	return 1
}

if [ $rebuild -eq 0 ] && find_prebuilt; then exit 0; fi
papt_lock "build-$kind"
# Another run may have finished the build while this one waited for the lock.
if [ $rebuild -eq 0 ] && find_prebuilt; then exit 0; fi

deps="flex bison libelf-dev libssl-dev bc gcc make xz-utils"
missing=$(for p in $deps; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		log "missing build dependencies: $missing (apt-get install them)"
		exit 1
	fi
	log "installing $missing"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >&2
fi

start=$(date +%s)
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
if [ $private -eq 1 ]; then
	papt_update
	log "downloading $src_pkg (private apt: $papt_suites)"
	papt_download "$src_pkg"
else
	log "downloading $src_pkg"
	apt-get download -q -o APT::Sandbox::User=root "$src_pkg" >&2
fi
dpkg-deb --fsys-tarfile "$src_pkg"_*.deb | tar -x --wildcards './usr/src/linux-source-*.tar.xz'
tarball=$(ls usr/src/linux-source-*.tar.xz)
log "extracting $tarball"
tar -xJf "$tarball"
cd "$(basename "$tarball" .tar.xz)"
"$root/scripts/$kconfig"
log "make bzImage (several minutes)"
make -j"$(nproc)" bzImage >"$work/make.log" 2>&1 || { tail -n 50 "$work/make.log" >&2; exit 1; }
cp .config "$out.config.tmp"
cp arch/x86/boot/bzImage "$out.tmp"
mv "$out.config.tmp" "$out.config"
mv "$out.tmp" "$out"
log "built $out in $(($(date +%s) - start)) s"
echo "$out"
