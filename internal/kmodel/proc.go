package kmodel

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// The model has no procfs of its own. With Config.Proc set, the kernel keeps the few
// /proc files imakexec reads current in that directory, rewritten at every boot (New,
// kexec, cold boot):
//
//	sys/kernel/random/boot_id      a new random UUID per boot, kexec included
//	sys/kernel/osrelease           the profile's release
//	cmdline                        the boot command line (below)
//	sys/kernel/kexec_load_disabled 0
//
// The command line of a cold boot is DefaultCmdline(cfg). After a kexec it is the command
// line given to kexec_file_load, byte for byte, as the kernel's /proc/cmdline is; the model
// does not parse it (the Config stays in force), so callers give one that agrees with it.

// DefaultCmdline is the command line of a cold-booted model kernel: console, the
// template and ima_hash in force, and ima_flush_htable when set.
func DefaultCmdline(cfg Config) string {
	c, err := cfg.withDefaults()
	if err != nil {
		c = cfg
	}
	// A built-in template is chosen by name (ima_template=), a custom one by its format
	// (ima_template_fmt=; ima_template_setup, ima_template_fmt_setup, 7.2).
	param := "ima_template"
	if !serialize.IsBuiltinName(c.Template) {
		param = "ima_template_fmt"
	}
	s := fmt.Sprintf("console=ttyS0 %s=%s ima_hash=%s", param, c.Template, c.Hash)
	if c.FlushHTable {
		s += " ima_flush_htable"
	}
	return s
}

// newBootID returns a random version-4 UUID, as /proc/sys/kernel/random/boot_id shows.
func newBootID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// writeProc rewrites the proc files for the running boot. Called with k.mu held.
func (k *Kernel) writeProc() error {
	if k.cfg.Proc == "" {
		return nil
	}
	files := []struct{ name, content string }{
		{"sys/kernel/random/boot_id", k.bootID},
		{"sys/kernel/osrelease", k.feat.Release},
		{"cmdline", k.cmdline},
		{"sys/kernel/kexec_load_disabled", "0"},
	}
	for _, f := range files {
		p := filepath.Join(k.cfg.Proc, filepath.FromSlash(f.name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("kmodel proc: %w", err)
		}
		// Replace, never rewrite in place: a reader sees the old boot or the new one.
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, []byte(strings.TrimRight(f.content, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("kmodel proc: %w", err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return fmt.Errorf("kmodel proc: %w", err)
		}
	}
	return nil
}

// BootID returns the running boot's id (what /proc/sys/kernel/random/boot_id shows).
func (k *Kernel) BootID() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.bootID
}

// Cmdline returns the running boot's command line (what /proc/cmdline shows).
func (k *Kernel) Cmdline() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cmdline
}
