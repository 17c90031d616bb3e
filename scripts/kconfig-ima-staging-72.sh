#!/bin/bash
# kconfig-ima-staging-72.sh: configure a minimal x86_64 kernel with 7.2's IMA
# staging and kexec carry-over (CONFIG_IMA_STAGING=y, CONFIG_IMA_KEXEC=y) for
# QEMU TCG + swtpm. Run it inside an extracted linux-source-7.2 tree; then
# "make -j$(nproc) bzImage". scripts/build-kernel.sh 7.2-ima-staging does all of it.
#
# tinyconfig plus what kconfig-ima-kexec.sh enables for 6.1, and:
#   KEXEC_CORE CRASH_CORE   needed by KEXEC_FILE on 7.2
#   IMA_STAGING             the _staged files, A and D (ima_queue_stage, 7.2)
#   CRYPTO_SHA512           ima_hash=sha512 in the tests
#   MEMFD_CREATE            imakexec kexec builds the handoff initrd in a memfd
set -euo pipefail
[ -x scripts/config ] || { echo "kconfig-ima-staging-72: run me in a kernel source tree" >&2; exit 1; }
make tinyconfig >/dev/null
S=scripts/config
on() { for o in "$@"; do $S -e "$o"; done; }
on 64BIT EXPERT PRINTK BUG TTY SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD \
   BINFMT_ELF BINFMT_SCRIPT PROC_FS SYSFS DEVTMPFS SHMEM TMPFS MULTIUSER \
   FUTEX EPOLL EVENTFD SIGNALFD TIMERFD POSIX_TIMERS ADVISE_SYSCALLS MEMBARRIER FILE_LOCKING \
   PCI ACPI PNP PNPACPI RELOCATABLE KEXEC KEXEC_FILE KEXEC_CORE CRASH_CORE \
   SECURITY SECURITYFS INTEGRITY IMA IMA_KEXEC IMA_STAGING IMA_NG_TEMPLATE IMA_DEFAULT_HASH_SHA256 \
   TCG_TPM TCG_TIS TCG_TIS_CORE CRYPTO_SHA1 CRYPTO_SHA256 CRYPTO_SHA512 \
   VIRTIO_MENU VIRTIO VIRTIO_PCI VIRTIO_BLK BLK_DEV BLOCK MEMFD_CREATE
$S -d KEXEC_SIG -d MODULES -d RANDOMIZE_BASE -d IMA_APPRAISE
$S --set-str IMA_DEFAULT_TEMPLATE ima-ng --set-str CMDLINE ""
make olddefconfig >/dev/null
# Show (and check) the options that matter.
grep -E '^CONFIG_(IMA|IMA_KEXEC|IMA_STAGING|KEXEC_FILE|TCG_TIS|RELOCATABLE|SERIAL_8250_CONSOLE|ACPI|MEMFD_CREATE|SHMEM|TMPFS)=' .config >&2
for o in IMA_KEXEC IMA_STAGING KEXEC_FILE; do
	grep -q "^CONFIG_$o=y" .config || { echo "kconfig-ima-staging-72: CONFIG_$o did not stick" >&2; exit 1; }
done
