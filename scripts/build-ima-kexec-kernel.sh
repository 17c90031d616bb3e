#!/bin/bash
# build-ima-kexec-kernel.sh: the 6.1 kernel with CONFIG_IMA_KEXEC=y; same as
# scripts/build-kernel.sh [--rebuild] 6.1-ima-kexec (see there).
exec "$(dirname "$0")/build-kernel.sh" "$@" 6.1-ima-kexec
