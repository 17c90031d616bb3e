#!/bin/bash
# fetch-kernel.sh: download and unpack the Debian cloud kernel used by the VM tests.
#
# The meta package (linux-image-cloud-amd64 by default) depends on one
# linux-image-<abi>-cloud-amd64 package; the ABI number moves with Debian
# updates, so it is resolved with apt-cache instead of being written down here.
# The package is unpacked with dpkg-deb -x (no initramfs-tools, no /boot change)
# into a cache outside the clone:
#
#   ${IMAKEXEC_CACHE:-/var/cache/imakexec}/kernels/<package>_<version>/boot/vmlinuz-*
#
# The path of the vmlinuz is the only thing printed on stdout. Running it again
# reuses the cached kernel. If apt cannot resolve the package (offline, no apt
# lists), the newest kernel already in the cache is printed instead.
#
# Environment:
#   IMAKEXEC_CACHE           cache root (default /var/cache/imakexec)
#   IMAKEXEC_KERNEL_PACKAGE  meta package (default linux-image-cloud-amd64)
set -euo pipefail

cache=${IMAKEXEC_CACHE:-/var/cache/imakexec}/kernels
meta=${IMAKEXEC_KERNEL_PACKAGE:-linux-image-cloud-amd64}
flavour=${meta#linux-image-}          # cloud-amd64

log() { echo "fetch-kernel: $*" >&2; }

newest_cached() {
	# Highest version first; the directory name is <package>_<version>.
	find "$cache" -mindepth 3 -maxdepth 3 -path "*/boot/vmlinuz-*-$flavour" 2>/dev/null | sort -V | tail -n 1
}

pkg=""
if command -v apt-cache >/dev/null; then
	# "  Depends: linux-image-6.1.0-57-cloud-amd64" (possibly alternatives with |).
	pkg=$(apt-cache depends "$meta" 2>/dev/null |
		sed -n "s/^ *|\{0,1\}Depends: \(linux-image-[0-9][^ ]*-$flavour\)\$/\1/p" | head -n 1 || true)
fi
if [ -z "$pkg" ]; then
	if k=$(newest_cached) && [ -n "$k" ]; then
		log "cannot resolve $meta with apt-cache; using cached $k"
		echo "$k"
		exit 0
	fi
	log "cannot resolve $meta with apt-cache (run apt-get update?) and no cached kernel in $cache"
	exit 1
fi
ver=$(apt-cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n 1)
dir=$cache/${pkg}_${ver}
abi=${pkg#linux-image-}
vmlinuz=$dir/boot/vmlinuz-$abi
if [ -f "$vmlinuz" ]; then
	echo "$vmlinuz"
	exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "downloading $pkg $ver"
# apt-get download writes into the current directory, which the _apt sandbox
# user cannot write to; as root, download as root instead of warning about it.
sandbox=()
[ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
(cd "$tmp" && apt-get download -q "${sandbox[@]}" "$pkg=$ver" >&2)
deb=$(ls "$tmp"/*.deb)
mkdir "$tmp/x"
dpkg-deb -x "$deb" "$tmp/x"
if [ ! -f "$tmp/x/boot/vmlinuz-$abi" ]; then
	log "$deb has no boot/vmlinuz-$abi"
	exit 1
fi
chmod -R a+rX "$tmp/x"
# Atomic publish: a concurrent run either sees nothing or the full tree.
if ! mv -T "$tmp/x" "$dir" 2>/dev/null; then
	[ -f "$vmlinuz" ] || { log "cannot move kernel into $dir"; exit 1; }
fi
log "unpacked into $dir"
echo "$vmlinuz"
