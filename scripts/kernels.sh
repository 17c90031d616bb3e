#!/bin/bash
# kernels.sh: make sure every kernel the VM tests boot is at hand before they start, so a
# fresh machine fetches or builds them once, with the whole machine, outside any test's
# timeout. Each script reuses what it finds (the shared folder, the cache) and prints a path:
#
#   Debian 6.1 cloud kernel         scripts/fetch-kernel.sh          (apt, host suite)
#   Debian 7.2 cloud kernel         scripts/fetch-debian72-kernel.sh (private apt)
#   6.1 with CONFIG_IMA_KEXEC       scripts/build-kernel.sh 6.1-ima-kexec
#   7.2 with IMA_STAGING+IMA_KEXEC  scripts/build-kernel.sh 7.2-ima-staging
#
# The harness (testvm) looks in the same places and runs the same scripts on its own, so
# this is an early start, not a second rule. $IMAKEXEC_NO_FETCH skips it.
set -euo pipefail
here=$(dirname "$0")
if [ -n "${IMAKEXEC_NO_FETCH:-}" ]; then
	echo "kernels: IMAKEXEC_NO_FETCH set, not fetching or building" >&2
	exit 0
fi
for step in "fetch-kernel.sh" "fetch-debian72-kernel.sh" "build-kernel.sh 6.1-ima-kexec" "build-kernel.sh 7.2-ima-staging"; do
	start=$(date +%s)
	# shellcheck disable=SC2086 # the step is a script and its argument
	k=$("$here"/$step)
	echo "kernels: $k ($(($(date +%s) - start)) s)" >&2
done
