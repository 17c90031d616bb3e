#!/bin/bash
# private-apt.sh: sourced by the kernel scripts. It sets up a private apt
# configuration for Debian suites newer than the host's (trixie,
# trixie-backports, sid) without touching the system's sources:
#
#   $IMAKEXEC_CACHE/apt/sources.list   deb <mirror> <suite> main, one per suite
#   $IMAKEXEC_CACHE/apt/lists/         its package lists (apt-get update, once a day)
#
# The mirror is the first "URIs:" of /etc/apt/sources.list.d/*.sources that is
# not a security mirror (the host's own mirror, so a local or proxy mirror is
# used as the host uses it); $IMAKEXEC_APT_MIRROR overrides it.
#
# After sourcing: papt_update, then papt_cache ARGS (apt-cache) and
# papt_download PKG... (apt-get download into the current directory).
: "${IMAKEXEC_CACHE:=/var/cache/imakexec}"
papt_dir=$IMAKEXEC_CACHE/apt
papt_suites=${IMAKEXEC_APT_SUITES:-trixie trixie-backports sid}

papt_mirror() {
	if [ -n "${IMAKEXEC_APT_MIRROR:-}" ]; then
		echo "$IMAKEXEC_APT_MIRROR"
		return
	fi
	local f u
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		for u in $(sed -n 's/^URIs:[[:space:]]*//p' "$f"); do
			case "$u" in *security*) continue ;; esac
			echo "${u%/}"
			return
		done
	done
	echo "private-apt: no mirror URI in /etc/apt/sources.list.d/*.sources (set IMAKEXEC_APT_MIRROR)" >&2
	return 1
}

papt_opts=(-o "Dir::Etc::sourcelist=$papt_dir/sources.list" -o Dir::Etc::sourceparts=-
	-o "Dir::State::Lists=$papt_dir/lists" -o "Dir::Cache=$papt_dir/cache" -o APT::Sandbox::User=root)

# papt_update: write the sources list and refresh the lists when missing or
# older than a day (or when the mirror changed).
papt_update() {
	local mirror s want
	mirror=$(papt_mirror) || return 1
	mkdir -p "$papt_dir/lists/partial" "$papt_dir/cache/archives/partial"
	want=$(for s in $papt_suites; do echo "deb $mirror $s main"; done)
	if [ "$(cat "$papt_dir/sources.list" 2>/dev/null)" != "$want" ]; then
		echo "$want" >"$papt_dir/sources.list"
		rm -f "$papt_dir/lists/stamp"
	fi
	if [ -z "$(find "$papt_dir/lists/stamp" -mtime -1 2>/dev/null)" ]; then
		echo "private-apt: apt-get update ($papt_suites from $mirror)" >&2
		apt-get "${papt_opts[@]}" -q update >&2 || return 1
		touch "$papt_dir/lists/stamp"
	fi
}

papt_cache() { apt-cache "${papt_opts[@]}" "$@"; }
papt_download() { apt-get "${papt_opts[@]}" -q download "$@" >&2; }

# papt_newest PATTERN: the newest package whose name matches the extended
# regular expression PATTERN (versions compared as dpkg does), from any suite.
papt_newest() {
	papt_cache pkgnames 2>/dev/null | grep -E "^($1)\$" | sort -V | tail -n 1
}

# papt_lock NAME: hold an exclusive flock on $IMAKEXEC_CACHE/kernels/.NAME.lock
# for the rest of the script, so two test packages never download or build the
# same thing at once (the second waits, then finds the result).
papt_lock() {
	mkdir -p "$IMAKEXEC_CACHE/kernels"
	exec 9>"$IMAKEXEC_CACHE/kernels/.$1.lock"
	flock 9
}
