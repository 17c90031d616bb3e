#!/bin/bash
# cross-arch.sh vet|test: build and vet for amd64, arm64 and 386 (vet), and run the pure
# unit tests as arm64 under qemu-user and natively as 386 (test).
#
# On 386 the packages that import go-fuse are left out, and named: go-fuse v2.12.1's
# splice package does not build for 32-bit (syscall.Splice returns int there). Those are
# the FUSE kernel model and what uses it (cmd/imakexec through `imakexec sim`, the tests of
# handover).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
# The packages whose tests need neither FUSE, a TPM simulator (cgo) nor a VM.
UNIT=(./serialize/... ./internal/kcmdline ./initramfs)

# pkgs386 build|vet lists the packages of the module that build for 386: no go-fuse
# below them (build), and for vet none in their tests either.
pkgs386() {
	GOARCH=386 $GO list -f '{{.ImportPath}} {{join .Deps " "}} | {{join .TestImports " "}} {{join .XTestImports " "}}' ./... |
		awk -v mode="$1" '
		{ line[NR] = $0; fuse = 0
		  for (i = 2; i <= NF && $i != "|"; i++) if ($i ~ /hanwen\/go-fuse/) fuse = 1
		  if (fuse) bad[$1] = 1 }
		END {
		  for (n = 1; n <= NR; n++) {
		    split(line[n], f, " "); pkg = f[1]; skip = (pkg in bad); intest = 0
		    for (i = 2; i in f; i++) { if (f[i] == "|") { intest = 1; continue }
		      if (intest && mode == "vet" && (f[i] in bad || f[i] ~ /hanwen\/go-fuse/)) skip = 1 }
		    if (skip) print pkg > "/dev/stderr"; else print pkg
		  } }' 2>/tmp/.cross-arch-skip.$$
	if [ -s /tmp/.cross-arch-skip.$$ ]; then
		echo "cross-arch: 386 $1 leaves out (go-fuse below them or their tests): $(tr '\n' ' ' </tmp/.cross-arch-skip.$$)" >&2
	fi
	rm -f /tmp/.cross-arch-skip.$$
}

case "${1:-}" in
vet)
	for arch in amd64 arm64; do
		echo "cross-arch: GOARCH=$arch go build ./... && go vet ./..." >&2
		GOARCH=$arch $GO build ./...
		GOARCH=$arch $GO vet ./...
	done
	mapfile -t b386 < <(pkgs386 build)
	echo "cross-arch: GOARCH=386 go build (${#b386[@]} packages)" >&2
	GOARCH=386 $GO build "${b386[@]}"
	mapfile -t v386 < <(pkgs386 vet)
	echo "cross-arch: GOARCH=386 go vet (${#v386[@]} packages)" >&2
	GOARCH=386 $GO vet "${v386[@]}"
	;;
test)
	qemu=$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)
	if [ -z "$qemu" ]; then
		if [ -n "${CI:-}" ] && [ "${CI}" != false ] && [ "${CI}" != 0 ]; then
			echo "cross-arch: qemu-aarch64 missing (Debian package qemu-user; scripts/install-deps.sh installs it)" >&2
			exit 1
		fi
		echo "cross-arch: SKIP arm64 unit tests: qemu-aarch64 not installed (Debian package qemu-user)" >&2
	else
		echo "cross-arch: GOARCH=arm64 go test -short under $qemu: ${UNIT[*]}" >&2
		GOARCH=arm64 $GO test -short -count=1 -exec "$qemu" "${UNIT[@]}"
	fi
	echo "cross-arch: GOARCH=386 go test -short: ${UNIT[*]}" >&2
	GOARCH=386 $GO test -short -count=1 "${UNIT[@]}"
	;;
*)
	echo "usage: $0 vet|test" >&2
	exit 2
	;;
esac
