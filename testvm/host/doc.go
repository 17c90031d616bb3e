// Package host is the systemd-host scenario: a real Debian 12 root filesystem on a virtio
// disk (built from Debian's packages by scripts/build-host-image.sh and cached under
// $IMAKEXEC_CACHE/hostimage), the distribution's kernel booted with the initrd that
// initramfs-tools (or dracut) made for it, systemd as pid 1, imakexec installed from the
// .deb that `make deb` builds, and swtpm. The guest side is guest/imakexec-testvm, a
// systemd service that frames its results on ttyS1 (testvm/frame).
//
// Each test prepares its own disk: the cached root tree, `dpkg -i` of the .deb in a chroot
// (its postinst rebuilds the initrd with the handoff script), the guest files, then
// `mke2fs -d`. Preparing needs root (chroot, device nodes in the tree).
package host
