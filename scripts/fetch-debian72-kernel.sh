#!/bin/bash
# fetch-debian72-kernel.sh: download and unpack Debian's own 7.2 cloud kernel
# (CONFIG_IMA=y; CONFIG_IMA_STAGING and CONFIG_IMA_KEXEC not set: what every
# Debian 7.2 user runs) for the VM tests, and print the vmlinuz path (the only
# output on stdout).
#
# Debian 7.2 splits the kernel: linux-binary-<abi>-cloud-amd64 holds
# usr/lib/modules/<abi>/vmlinuz, linux-base-<abi>-cloud-amd64 its config
# (usr/lib/modules/<abi>/config); linux-image-<abi>-cloud-amd64 is only the
# meta package that pulls them in with the modules and an initramfs tool. The newest 7.2 ABI of trixie, trixie-backports and sid is
# picked (globbed, never written down here) through a private apt setup
# (scripts/private-apt.sh), and unpacked with dpkg-deb -x into
#
#   ${IMAKEXEC_CACHE:-/var/cache/imakexec}/kernels/debian-7.2/<package>_<version>/vmlinuz-<abi>
#   (and config-<abi> beside it)
#
# Running it again reuses the cache; offline, the newest cached kernel is used.
# A concurrent run waits for the first (flock) and then finds its result.
#
# Environment: IMAKEXEC_CACHE, IMAKEXEC_APT_MIRROR, IMAKEXEC_KERNEL_SERIES
# (default 7.2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/private-apt.sh"
series=${IMAKEXEC_KERNEL_SERIES:-7.2}
cache=$IMAKEXEC_CACHE/kernels/debian-$series
log() { echo "fetch-debian72-kernel: $*" >&2; }

newest_cached() {
	find "$cache" -mindepth 2 -maxdepth 2 -name "vmlinuz-$series.*-cloud-amd64" 2>/dev/null | sort -V | tail -n 1
}

papt_lock "debian-$series"
re_series=${series//./\\.}
if ! papt_update || ! pkg=$(papt_newest "linux-binary-$re_series\.[0-9]+\+deb[0-9]+-cloud-amd64") || [ -z "$pkg" ]; then
	if k=$(newest_cached) && [ -n "$k" ]; then
		log "apt cannot resolve a $series cloud kernel; using cached $k"
		echo "$k"
		exit 0
	fi
	log "no linux-binary-$series.*-cloud-amd64 in $papt_suites and none cached in $cache"
	exit 1
fi
abi=${pkg#linux-binary-}
ver=$(papt_cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n 1)
dir=$cache/${pkg}_${ver}
vmlinuz=$dir/vmlinuz-$abi
if [ -f "$vmlinuz" ]; then
	echo "$vmlinuz"
	exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "downloading $pkg $ver and linux-base-$abi"
(cd "$tmp" && papt_download "$pkg=$ver" "linux-base-$abi=$ver")
mkdir "$tmp/x" "$tmp/out"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
m=$tmp/x/usr/lib/modules/$abi
[ -f "$m/vmlinuz" ] || { log "$pkg has no usr/lib/modules/$abi/vmlinuz"; exit 1; }
cp "$m/vmlinuz" "$tmp/out/vmlinuz-$abi"
if [ -f "$m/config" ]; then
	cp "$m/config" "$tmp/out/config-$abi"
	grep -E '^(# )?CONFIG_IMA(_STAGING|_KEXEC|_DISABLE_HTABLE)?[= ]' "$m/config" | sed 's/^/  /' >&2 || true
fi
chmod -R a+rX "$tmp/out"
# Atomic publish: a reader sees nothing or the whole directory.
mv -T "$tmp/out" "$dir"
log "unpacked into $dir"
echo "$vmlinuz"
