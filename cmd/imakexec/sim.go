package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/simfs"
	"github.com/imakexec/imakexec/internal/tpmserve"
)

// simCmd runs the kernel model as a process (README-sim.md).
type simCmd struct {
	profile, mount, tpmSocket, control, policy, template, hash, proc string
	flushHTable, disableHTable                                       bool
	extraKB                                                          int
}

func init() { register(&simCmd{}) }

func (c *simCmd) Name() string { return "sim" }
func (c *simCmd) Synopsis() string {
	return "run the IMA kernel model: securityfs over FUSE, its TPM on a socket, scripted events"
}
func (c *simCmd) Usage() string {
	return "--profile P --mount DIR --tpm-socket SOCK --control FILE [flags]"
}

func (c *simCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.profile, "profile", string(kmodel.Profile72), "kernel profile: debian-6.1, 6.1-ima-kexec, 6.16, 7.2 (CONFIG_IMA_STAGING and IMA_KEXEC), debian-7.2 (neither), 7.2+trim-log")
	fs.StringVar(&c.mount, "mount", "", "directory to mount the model's securityfs on (it plays /sys/kernel/security)")
	fs.StringVar(&c.tpmSocket, "tpm-socket", "", "unix socket to serve the model's TPM on (raw TPM 2.0 commands)")
	fs.StringVar(&c.control, "control", "", "event file: a fifo (created if missing) or a regular file that is followed")
	fs.StringVar(&c.policy, "policy", "", "IMA policy file (kernel syntax); default: exec, root reads, kexec functions, ima_kexec critical data")
	fs.StringVar(&c.template, "template", "ima-ng", "default template (ima_template=, or a format as ima_template_fmt=; ima needs --hash sha1)")
	fs.StringVar(&c.hash, "hash", "sha256", "ima_hash")
	fs.BoolVar(&c.flushHTable, "flush-htable", false, "boot with ima_flush_htable (ignored with --disable-htable, as the kernel does)")
	fs.BoolVar(&c.disableHTable, "disable-htable", false, "CONFIG_IMA_DISABLE_HTABLE")
	fs.IntVar(&c.extraKB, "extra-memory-kb", 0, "CONFIG_IMA_KEXEC_EXTRA_MEMORY_KB (6.16+)")
	fs.StringVar(&c.proc, "proc", "", "directory the model keeps the procfs files in that imakexec reads (boot id, release, cmdline); pass it as --proc to the other commands")
}

func (c *simCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("unexpected arguments %q", args)
	}
	if c.mount == "" || c.control == "" {
		return usageErrorf("--mount and --control are required")
	}
	p, err := kmodel.ParseProfile(c.profile)
	if err != nil {
		return usageErrorf("%v", err)
	}
	cfg := kmodel.Config{Profile: p, Template: c.template, Hash: c.hash, FlushHTable: c.flushHTable, DisableHTable: c.disableHTable, ExtraMemoryKB: c.extraKB, Proc: c.proc}
	if c.policy != "" {
		b, err := os.ReadFile(c.policy)
		if err != nil {
			return fmt.Errorf("read policy: %w", err)
		}
		cfg.Policy = string(b)
	}
	k, err := kmodel.New(cfg)
	if err != nil {
		return err
	}
	defer k.Close()
	srv, err := simfs.Mount(c.mount, k, nil)
	if err != nil {
		return err
	}
	defer srv.Unmount()
	if c.tpmSocket != "" {
		ts, err := tpmserve.Listen(c.tpmSocket, k.TPM())
		if err != nil {
			return err
		}
		defer ts.Close()
	}
	events, err := openControl(ctx, c.control)
	if err != nil {
		return err
	}
	out := json.NewEncoder(env.Stdout)
	out.Encode(map[string]any{"event": "ready", "profile": p, "mount": c.mount, "tpm_socket": c.tpmSocket, "counters": k.Counters()})
	for {
		select {
		case <-ctx.Done():
			out.Encode(map[string]any{"event": "stop"})
			return nil
		case line, ok := <-events:
			if !ok {
				return nil
			}
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			out.Encode(simEvent(k, line))
		}
	}
}

// openControl delivers the control file's lines. A missing path becomes a fifo; a fifo is
// opened read-write so that writers may come and go; a regular file is followed.
func openControl(ctx context.Context, name string) (<-chan string, error) {
	fi, err := os.Stat(name)
	if errors.Is(err, os.ErrNotExist) {
		if err := syscall.Mkfifo(name, 0o600); err != nil {
			return nil, fmt.Errorf("create control fifo: %w", err)
		}
		fi, err = os.Stat(name)
	}
	if err != nil {
		return nil, err
	}
	fifo := fi.Mode()&os.ModeNamedPipe != 0
	flags := os.O_RDONLY
	if fifo {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(name, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open control: %w", err)
	}
	ch := make(chan string)
	go func() {
		defer close(ch)
		defer f.Close()
		r := bufio.NewReader(f)
		var partial string
		for {
			s, err := r.ReadString('\n')
			partial += s
			if err == nil {
				select {
				case ch <- partial:
				case <-ctx.Done():
					return
				}
				partial = ""
				continue
			}
			if err != io.EOF || fifo {
				return
			}
			select { // follow a regular file
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return ch, nil
}

// simEvent runs one event line and returns its JSON outcome.
func simEvent(k *kmodel.Kernel, line string) map[string]any {
	f := strings.Fields(line)
	out := map[string]any{"event": f[0], "line": line}
	fail := func(err error) map[string]any {
		out["ok"] = false
		out["error"] = err.Error()
		return out
	}
	need := func(n int) error {
		if len(f) < n+1 {
			return fmt.Errorf("%s needs %d argument(s)", f[0], n)
		}
		return nil
	}
	var res any
	var err error
	switch f[0] {
	case "exec", "read":
		if err = need(1); err != nil {
			return fail(err)
		}
		var content []byte
		if content, err = os.ReadFile(f[1]); err != nil {
			return fail(err)
		}
		if f[0] == "exec" {
			res, err = k.Exec(f[1], content)
		} else {
			res, err = k.Read(f[1], content)
		}
	case "buffer":
		if err = need(1); err != nil {
			return fail(err)
		}
		_, text, _ := strings.Cut(strings.TrimSpace(line[strings.Index(line, "buffer")+len("buffer"):]), " ")
		res, err = k.Buffer(f[1], []byte(text))
	case "violation":
		if err = need(1); err != nil {
			return fail(err)
		}
		res, err = k.Violation(f[1])
	case "synthetic":
		if err = need(1); err != nil {
			return fail(err)
		}
		n, perr := strconv.Atoi(f[1])
		if perr != nil || n < 0 {
			return fail(fmt.Errorf("synthetic: bad count %q", f[1]))
		}
		var listed int
		listed, err = k.Synthetic(n)
		res = map[string]int{"listed": listed}
	case "kexec-load":
		if err = need(2); err != nil {
			return fail(err)
		}
		kern, rerr := os.ReadFile(f[1])
		if rerr != nil {
			return fail(rerr)
		}
		initrd, rerr := os.ReadFile(f[2])
		if rerr != nil {
			return fail(rerr)
		}
		cmdline := strings.Join(f[3:], " ")
		res, err = k.KexecLoadFiles(kmodel.File{Path: f[1], Content: kern}, kmodel.File{Path: f[2], Content: initrd}, cmdline)
	case "suspend":
		res, err = k.Suspend()
	case "kexec-execute":
		res, err = k.KexecExecuteResult()
	case "cold-boot":
		err = k.ColdBoot()
	case "next-profile":
		if err = need(1); err != nil {
			return fail(err)
		}
		err = k.SetNextProfile(kmodel.Profile(f[1]))
	case "counters":
	default:
		return fail(fmt.Errorf("unknown event %q", f[0]))
	}
	if err != nil {
		return fail(err)
	}
	out["ok"] = true
	if res != nil {
		out["result"] = res
	}
	out["counters"] = k.Counters()
	out["profile"] = k.Profile()
	return out
}
