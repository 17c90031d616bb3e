#!/bin/bash
# capture-testdata.sh: regenerate serialize/testdata/vm from real kernels.
#
# Boots each capture variant (go run ./testvm/cmd/capture -list) in QEMU (TCG)
# with a fresh swtpm, saves the IMA lists and PCRs under
# serialize/testdata/vm/<variant>/, then cross-checks them with evmctl
# (scripts/check-testdata.sh).
#
# Usage: scripts/capture-testdata.sh [VARIANT...]     (default: all)
#
# Needs qemu-system-x86, swtpm, swtpm-tools, ima-evm-utils. Kernels: see
# testvm.FindKernel / testvm.FindIMAKexecKernel ($IMAKEXEC_KERNEL,
# $IMAKEXEC_IMA_KEXEC_KERNEL, the cache of scripts/fetch-kernel.sh and
# scripts/build-ima-kexec-kernel.sh). About 45 s for all variants.
#
# Environment: CAPTURE_OUT (default serialize/testdata/vm), CAPTURE_LOGS
# (keep console/data logs and TPM state there).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${CAPTURE_OUT:-serialize/testdata/vm}
args=(-out "$out")
if [ $# -gt 0 ]; then
	args+=(-variants "$(IFS=,; echo "$*")")
fi
if [ -n "${CAPTURE_LOGS:-}" ]; then
	args+=(-logs "$CAPTURE_LOGS")
fi
go run ./testvm/cmd/capture "${args[@]}"
scripts/check-testdata.sh "$out"
