package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
)

// statusCmd reports the kernel interfaces, the TPM and the handoff store. It changes nothing.
type statusCmd struct {
	store string
	proc  string
	json  bool
}

func init() { register(&statusCmd{}) }

func (*statusCmd) Name() string     { return "status" }
func (*statusCmd) Synopsis() string { return "show the kernel interface, TPM and handoff store" }
func (*statusCmd) Usage() string    { return "[--store DIR] [--json]" }

func (c *statusCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point (boot id, kernel release, command line)")
	fs.BoolVar(&c.json, "json", false, "print JSON")
}

func (c *statusCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("status takes no arguments")
	}
	t, terr := handover.OpenTPM(env.Global.TPM)
	if terr == nil {
		defer t.Close()
	}
	var st *handover.Status
	if terr == nil {
		st = handover.GetStatusContext(ctx, handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}, c.store, t, env.Global.TPM, nil)
	} else {
		st = handover.GetStatusContext(ctx, handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}, c.store, nil, env.Global.TPM, terr)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("status: %w (%s)", err, st.Store.Err)
	}
	if c.json {
		return writeJSON(env.Stdout, st)
	}
	w := env.Stdout
	fmt.Fprintf(w, "securityfs:   %s\n", st.Securityfs)
	if st.KernelErr != "" {
		fmt.Fprintf(w, "kernel:       %s\n", st.KernelErr)
	} else {
		fmt.Fprintf(w, "IMA dir:      %s\n", st.IMADir)
		fmt.Fprintf(w, "kernel:       %s (boot %s)\n", st.Release, st.BootID)
		fmt.Fprintf(w, "backend:      %s (offered: %s)\n", st.Backend, strings.ReplaceAll(strings.Trim(fmt.Sprint(st.Backends), "[]"), " ", ", "))
		fmt.Fprintf(w, "kernel banks: %s\n", orNone(st.Banks))
		fmt.Fprintf(w, "records:      %d in the kernel's list\n", st.Count)
		fmt.Fprintf(w, "flush_htable: %s\n", st.FlushHtable)
		for _, h := range st.Holders {
			fmt.Fprintf(w, "held open:    %s\n", h)
		}
		if len(st.Holders) > 0 {
			fmt.Fprintf(w, "              on 7.2 a reader that keeps the IMA files open makes every drain fail with EBUSY: let it read `imakexec serve` instead\n")
		}
	}
	if st.TPMErr != "" {
		fmt.Fprintf(w, "TPM:          %s: %s\n", st.TPM, st.TPMErr)
	} else {
		fmt.Fprintf(w, "TPM:          %s, banks %s, resetCount %d, restartCount %d\n", st.TPM, orNone(st.TPMBanks), deref(st.ResetCount), deref(st.RestartCount))
	}
	s := st.Store
	switch {
	case s.Err != "":
		fmt.Fprintf(w, "store:        %s: %s\n", s.Dir, s.Err)
	case !s.Exists:
		fmt.Fprintf(w, "store:        %s: empty (no drain yet)\n", s.Dir)
	default:
		fmt.Fprintf(w, "store:        %s: %d records in %d segments, %d bytes, %d kernel generation(s)\n", s.Dir, s.Records, s.Segments, s.Bytes, s.Boots)
		fmt.Fprintf(w, "last drain:   %s (ima_flush_htable %s); %d stored records still held by the kernel\n", s.LastDrain.Format("2006-01-02 15:04:05Z07:00"), s.FlushHtable, s.Retained)
		fmt.Fprintf(w, "TPM binding:  resetCount %d, restartCount %d", s.Binding.ResetCount, s.Binding.RestartCount)
		if s.BindingMatch != nil && *s.BindingMatch {
			fmt.Fprintf(w, " (matches)")
		}
		fmt.Fprintln(w)
		if s.BindingNote != "" {
			fmt.Fprintf(w, "note:         %s\n", s.BindingNote)
		}
	}
	if len(s.Archives) > 0 {
		fmt.Fprintf(w, "archived:     %s\n", strings.Join(s.Archives, ", "))
	}
	if s.Error != nil {
		if errors.Is(s.Error, handover.ErrTampered) {
			return notVerified(s.Error)
		}
		return s.Error
	}
	return nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}

func deref(p *uint32) uint32 {
	if p == nil {
		return 0
	}
	return *p
}
