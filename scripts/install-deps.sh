#!/bin/bash
# install-deps.sh: install what the build, the tests and the demo need on a Debian 12
# machine. Idempotent: only missing packages are installed. Needs root for apt-get.
#
#   qemu-system-x86 swtpm swtpm-tools   VM tests and the demo (QEMU TCG + TPM emulator)
#   ima-evm-utils                       evmctl, the independent cross-check in the tests
#   cpio fuse3                          initramfs inspection; the FUSE kernel model
#   gcc libssl-dev                      cgo TPM simulator (go-tpm-tools), go test -race
#   qemu-user                           arm64 unit tests (scripts/cross-arch.sh test)
#   mmdebstrap e2fsprogs                the Debian root filesystem of the systemd-host scenario (testvm/host)
#   python3-jsonschema python3-packaging python3-cryptography
#                                       what Keylime's verifier replay imports (handover/view tests)
set -euo pipefail
pkgs=(qemu-system-x86 swtpm swtpm-tools ima-evm-utils cpio fuse3 gcc libssl-dev qemu-user mmdebstrap e2fsprogs python3 python3-jsonschema python3-packaging python3-cryptography)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: installing ${missing[*]}" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
