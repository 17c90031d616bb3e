package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/initramfs"
)

// initramfsCmd builds a u-root initramfs with imakexec as the boot hook. It copies its own
// executable, so no Go toolchain is needed.
type initramfsCmd struct {
	out, self, init_ string
	kernels, files   []string
	store, next      string
}

func init() { register(&initramfsCmd{}) }

func (*initramfsCmd) Name() string { return "initramfs" }
func (*initramfsCmd) Synopsis() string {
	return "build an initramfs with imakexec as its boot hook (u-root uinit or /init)"
}
func (*initramfsCmd) Usage() string {
	return "-o FILE [--init U-ROOT-INIT] [--kernel K ...] [--file SRC:DST ...] [--store DIR] [--next PATH]"
}

func (c *initramfsCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&c.out, "output", "o", "", "output file (newc cpio, uncompressed)")
	fs.StringVar(&c.self, "self", "/proc/self/exe", "imakexec executable to put in the image")
	fs.StringVar(&c.init_, "init", "", "prebuilt u-root init (go build github.com/u-root/u-root/cmds/core/init): /init, with imakexec as /bin/uinit; default: imakexec is /init")
	fs.StringArrayVar(&c.kernels, "kernel", nil, "kernel image to include as boot/NAME (repeatable)")
	fs.StringArrayVar(&c.files, "file", nil, "extra file SRC:DST (repeatable)")
	fs.StringVar(&c.store, "store", "/run/imakexec", "hook: store directory in the initramfs")
	fs.StringVar(&c.next, "next", "", "hook: program to exec after rejoin")
}

func (c *initramfsCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("initramfs takes no arguments")
	}
	if c.out == "" {
		return usageErrorf("-o FILE is required")
	}
	o := initramfs.BuildOptions{Self: c.self, Init: c.init_, Files: c.files}
	for _, k := range c.kernels {
		o.Files = append(o.Files, k+":boot/"+filepath.Base(k))
	}
	o.HookArgs = []string{"--store " + c.store}
	if c.next != "" {
		o.HookArgs = append(o.HookArgs, "--next "+c.next)
	}
	tmp := c.out + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	err = initramfs.BuildInitramfs(f, o)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, c.out)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("build initramfs: %w", err)
	}
	fmt.Fprintf(env.Stdout, "wrote %s\n", c.out)
	return nil
}
