package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/handover/view"
)

// serveCmd serves the joined log (store + live records) as the kernel's list files over
// FUSE, for agents that read ascii_runtime_measurements (README "serve").
type serveCmd struct {
	store, proc, mount string
	gid                uint32
	allowOther         bool
	indexEvery         int
	memLimit           int64
}

func init() { register(&serveCmd{}) }

func (*serveCmd) Name() string { return "serve" }
func (*serveCmd) Synopsis() string {
	return "serve the joined log as the kernel's IMA list files (FUSE, read-only) for attestation agents"
}
func (*serveCmd) Usage() string {
	return "--mount DIR [--store DIR] [--gid GID] [--allow-other=false]"
}

func (c *serveCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.mount, "mount", "", "mount point (created when missing); an agent's ima_ml_path is DIR/ascii_runtime_measurements")
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point (boot id, kernel release)")
	fs.Uint32Var(&c.gid, "gid", 0, "group owning the files (mode 0440)")
	fs.BoolVar(&c.allowOther, "allow-other", true, "let other users' processes read (the kernel checks the files' modes); needed by agents that open the file as root and then drop privileges")
	fs.IntVar(&c.indexEvery, "index-every", view.DefaultIndexEvery, "records between two checkpoints of the sparse index")
	fs.Int64Var(&c.memLimit, "memory-limit", 24<<20, "soft memory limit of the Go runtime in bytes (0: none)")
}

func (c *serveCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("serve takes no arguments")
	}
	if c.mount == "" {
		return usageErrorf("--mount DIR is required")
	}
	if c.memLimit > 0 {
		debug.SetMemoryLimit(c.memLimit)
	}
	logf := func(format string, a ...any) { fmt.Fprintf(env.Stderr, "imakexec serve: "+format+"\n", a...) }
	v, err := view.New(ctx, view.Options{
		Paths:      handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc},
		StoreDir:   c.store,
		IndexEvery: c.indexEvery,
		Logf:       logf,
	})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.mount, 0o755); err != nil {
		return err
	}
	srv, err := view.Mount(c.mount, v, &view.MountOptions{AllowOther: c.allowOther, GID: c.gid})
	if err != nil {
		return err
	}
	unmounted := make(chan struct{})
	go func() { srv.Wait(); close(unmounted) }()
	n, _ := v.Count(ctx)
	if err := sdNotify(fmt.Sprintf("READY=1\nSTATUS=serving %d records at %s", n, c.mount)); err != nil {
		logf("sd_notify: %v", err)
	}
	if env.Global.Verbose {
		logf("serving %d records at %s", n, c.mount)
	}
	select {
	case <-ctx.Done():
	case <-unmounted:
		return fmt.Errorf("%s was unmounted", c.mount)
	}
	sdNotify("STOPPING=1")
	return srv.Unmount()
}

// sdNotify sends state to the service manager (sd_notify(3)): one datagram to the unix
// socket named by $NOTIFY_SOCKET (a leading '@' names an abstract socket). Without the
// variable it does nothing.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Write([]byte(state))
	return err
}
