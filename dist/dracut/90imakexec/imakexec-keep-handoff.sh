#!/bin/sh
# pre-pivot: /run survives switch_root, the initramfs's /imakexec does not.
if [ -d /imakexec ]; then
	mkdir -p -m 0700 /run/imakexec
	rm -rf /run/imakexec/handoff
	cp -a /imakexec /run/imakexec/handoff && chmod 0700 /run/imakexec/handoff
fi
