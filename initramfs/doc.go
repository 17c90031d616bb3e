// Package initramfs is imakexec's kexec side: the handover in the right order (RunKexec),
// the handoff archive appended to the initrd given to kexec_file_load (HandoffArchive,
// AppendArchive), a bounded reader of initramfs images for untrusted input (Walk,
// ReadImageHandoff), the handoff read back in the next kernel (ReadHandoff), the boot hook
// (RunHook) and an initramfs builder with imakexec as u-root's uinit or /init
// (BuildInitramfs).
//
// # Handoff format (version 1)
//
// The handoff is one uncompressed newc archive, appended after the base initrd with NUL
// padding to a 4-byte absolute offset. It holds only:
//
//	imakexec/                  directory, 0700
//	imakexec/handoff.json      the Handoff metadata (JSON object, format "imakexec-handoff", version 1)
//	imakexec/store/            directory, 0700: the handoff store's files, relative names
//	imakexec/store/...         regular files, 0600, one link, e.g. manifest.jsonl, segments/000001.kexec
//
// The kernel unpacks it into the next kernel's rootfs, so the hook finds it at /imakexec
// and reads it with ReadHandoff("/imakexec"), which checks every store file against the
// listing in handoff.json (size, SHA-256) and refuses symlinks and unlisted files.
//
// The initrd's own digest cannot be inside it. It is on the command line handed to
// kexec_file_load as "imakexec.initrd=<ima_hash>:<hex>" (plus ",sha1:<hex>" when the "ima"
// template is in use); the next kernel's /proc/cmdline equals that measured buffer. With
// Handoff.Kernel, Handoff.Initrd.MemfdName, Handoff.Cmdline and Handoff.OldKernel, rejoin
// can rebuild each kexec-window record (KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK named
// "memfd:imakexec-initrd", KEXEC_CMDLINE, and any Handoff.PostDrainReads) and keep the
// combination the TPM proves.
package initramfs
