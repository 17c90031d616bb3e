#!/bin/bash
# dracut module: keep the imakexec handoff (/imakexec, unpacked by the kernel from the archive
# imakexec kexec appends to the initrd) in /run/imakexec/handoff before switch_root.
check() { return 0; }
depends() { return 0; }
install() {
	inst_hook pre-pivot 90 "$moddir/imakexec-keep-handoff.sh"
}
