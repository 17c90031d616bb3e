#!/bin/bash
# fetch-host-kernel-debs.sh [FLAVOUR]: download the newest Debian 7.2 kernel (trixie-backports,
# else sid) and what it needs beyond bookworm (linux-base, its linux-base-/linux-binary-/
# linux-modules- split packages) as .debs, for the systemd-host scenario's "live update into
# a newer kernel". Prints the directory holding them, cached under
# ${IMAKEXEC_CACHE:-/var/cache/imakexec}/hostkernel/<package>_<version>. The apt lists are
# private (the system's sources are not changed); the mirror is read from
# /etc/apt/sources.list.d/*.sources (else deb.debian.org).
set -euo pipefail
flavour=${1:-cloud-amd64}
root=${IMAKEXEC_CACHE:-/var/cache/imakexec}/hostkernel
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
apt=$root/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
printf 'deb %s trixie main\ndeb %s trixie-backports main\ndeb %s sid main\n' "$mirror" "$mirror" "$mirror" > "$apt/sources.list"
O=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt/lists"
	-o Dir::Cache="$apt/cache" -o APT::Get::List-Cleanup=0)
# Lists older than a day are refreshed.
if [ -z "$(find "$apt/lists" -name '*Packages*' -mtime -1 2>/dev/null | head -n1)" ]; then
	apt-get "${O[@]}" -qq update >&2
fi
pkg=$(apt-cache "${O[@]}" search --names-only "^linux-image-7\.2\.[0-9.]*\+deb[0-9]*-$flavour\$" | cut -d' ' -f1 | sort -V | tail -n1)
[ -n "$pkg" ] || { echo "fetch-host-kernel-debs: no 7.2 $flavour kernel in trixie-backports or sid" >&2; exit 1; }
ver=$(apt-cache "${O[@]}" show --no-all-versions "$pkg" | sed -n 's/^Version: //p' | head -n1)
dir=$root/${pkg}_${ver}
if [ -d "$dir" ] && ls "$dir"/*.deb >/dev/null 2>&1; then echo "$dir"; exit 0; fi
deps=$(apt-cache "${O[@]}" show --no-all-versions "$pkg" | sed -n 's/^Depends: //p' | tr ',' '\n' |
	sed -n 's/^ *\(linux-\(base\|binary\|modules\)-[^ ]*\).*/\1/p')
tmp=$(mktemp -d "$root/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get "${O[@]}" -qq download "$pkg" linux-base $deps >&2)
rm -rf "$dir"; mv "$tmp" "$dir"; trap - EXIT
echo "$dir"
