#!/bin/bash
# kconfig-ima-kexec.sh: configure a minimal x86_64 kernel with
# CONFIG_IMA_KEXEC=y for QEMU TCG + swtpm (no Debian kernel enables
# IMA_KEXEC). Run it inside an extracted linux-source-6.1 tree; then
# "make -j$(nproc) bzImage". scripts/build-ima-kexec-kernel.sh does all of it.
#
# tinyconfig plus:
#   base        64BIT EXPERT PRINTK TTY SERIAL_8250(_CONSOLE) BLK_DEV_INITRD BINFMT_* PROC_FS SYSFS
#               DEVTMPFS SHMEM TMPFS MULTIUSER
#   Go runtime  FUTEX EPOLL EVENTFD SIGNALFD TIMERFD POSIX_TIMERS ADVISE_SYSCALLS MEMBARRIER FILE_LOCKING
#   platform    PCI ACPI PNP PNPACPI RELOCATABLE (kexec_file_load wants a relocatable bzImage)
#   kexec, IMA  KEXEC KEXEC_FILE SECURITY SECURITYFS INTEGRITY IMA IMA_KEXEC IMA_NG_TEMPLATE
#               IMA_DEFAULT_HASH_SHA256
#   TPM, crypto TCG_TPM TCG_TIS TCG_TIS_CORE CRYPTO_SHA1 CRYPTO_SHA256
#   disk        VIRTIO VIRTIO_PCI VIRTIO_BLK (built in)
#   off         KEXEC_SIG MODULES RANDOMIZE_BASE IMA_APPRAISE
set -euo pipefail
[ -x scripts/config ] || { echo "kconfig-ima-kexec: run me in a kernel source tree" >&2; exit 1; }
make tinyconfig >/dev/null
S=scripts/config
on() { for o in "$@"; do $S -e "$o"; done; }
on 64BIT EXPERT PRINTK BUG TTY SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD \
   BINFMT_ELF BINFMT_SCRIPT PROC_FS SYSFS DEVTMPFS SHMEM TMPFS MULTIUSER \
   FUTEX EPOLL EVENTFD SIGNALFD TIMERFD POSIX_TIMERS ADVISE_SYSCALLS MEMBARRIER FILE_LOCKING \
   PCI ACPI PNP PNPACPI RELOCATABLE KEXEC KEXEC_FILE \
   SECURITY SECURITYFS INTEGRITY IMA IMA_KEXEC IMA_NG_TEMPLATE IMA_DEFAULT_HASH_SHA256 \
   TCG_TPM TCG_TIS TCG_TIS_CORE CRYPTO_SHA1 CRYPTO_SHA256 \
   VIRTIO_MENU VIRTIO VIRTIO_PCI VIRTIO_BLK BLK_DEV BLOCK
$S -d KEXEC_SIG -d MODULES -d RANDOMIZE_BASE -d IMA_APPRAISE
$S --set-str IMA_DEFAULT_TEMPLATE ima-ng --set-str CMDLINE ""
make olddefconfig >/dev/null
# Show (and check) the options that matter.
grep -E '^CONFIG_(IMA_KEXEC|KEXEC_FILE|TCG_TIS|RELOCATABLE|FUTEX|EPOLL|SERIAL_8250_CONSOLE|ACPI|VIRTIO_BLK)=' .config >&2
grep -q '^CONFIG_IMA_KEXEC=y' .config || { echo "kconfig-ima-kexec: CONFIG_IMA_KEXEC did not stick" >&2; exit 1; }
