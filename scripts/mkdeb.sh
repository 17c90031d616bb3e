#!/bin/bash
# mkdeb.sh ROOT VERSION ARCH OUTDIR: turn a `make install DESTDIR=ROOT` tree into a Debian
# package with dpkg-deb (no debhelper needed). The maintainer scripts enable the units and
# rebuild the initramfs so that the handoff survives switch_root.
set -euo pipefail
root=$1 version=${2#v} arch=$3 outdir=$4
# A Debian version starts with a digit and has no '-' (native package): v0.3-4-gabc -> 0.3+4+gabc.
case "$version" in [0-9]*) ;; *) version="0.0.0+g$version" ;; esac
version=$(printf %s "$version" | tr -c 'A-Za-z0-9.+~' '+')
mkdir -p "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CTRL
Package: imakexec
Version: $version
Architecture: $arch
Maintainer: imakexec developers <imakexec@users.noreply.github.com>
Installed-Size: $size
Depends: systemd (>= 252)
Recommends: kexec-tools, initramfs-tools | dracut
Section: admin
Priority: optional
Homepage: https://github.com/imakexec/imakexec
Description: keep the IMA measurement log whole and verifiable across kexec
 imakexec drains the kernel's IMA measurement list into a store, hands it to the
 next kernel across kexec soft reboots, rejoins the segments into one log proven
 against the TPM in every bank, and exports it in the kernel's own formats.
CTRL
cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
	mkdir -p -m 0700 /var/lib/imakexec
	if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
	systemctl enable imakexec-rejoin.service imakexec-joined.target imakexec-shutdown.service imakexec-drain.timer >/dev/null || true
	if [ -d /run/systemd/system ]; then systemctl start imakexec-shutdown.service imakexec-drain.timer || true; fi
	if command -v update-initramfs >/dev/null 2>&1; then update-initramfs -u || true
	elif command -v dracut >/dev/null 2>&1; then dracut -f --regenerate-all || true; fi
fi
SH
cat > "$root/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ]; then
	systemctl disable imakexec-rejoin.service imakexec-joined.target imakexec-shutdown.service imakexec-drain.timer >/dev/null || true
	if [ -d /run/systemd/system ]; then systemctl stop imakexec-drain.timer || true; fi
fi
SH
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
SH
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
out="$outdir/imakexec_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
