package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
)

// drainCmd moves the kernel's IMA records into the handoff store (docs/store-format.md "The handoff
// store"): read, persist durably, then delete with the kernel's interface.
type drainCmd struct {
	store   string
	proc    string
	backend string
	noWait  bool
	json    bool
}

func init() { register(&drainCmd{}) }

func (*drainCmd) Name() string     { return "drain" }
func (*drainCmd) Synopsis() string { return "move IMA records from the kernel into the handoff store" }
func (*drainCmd) Usage() string {
	return "[--store DIR] [--backend auto|staged|delete-n|trim-log|snapshot] [--json]"
}

func (c *drainCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point (boot id, kernel release, command line)")
	fs.StringVar(&c.backend, "backend", "auto", "kernel interface: auto, staged, delete-n, trim-log or snapshot")
	fs.BoolVar(&c.noWait, "no-wait", false, "fail at once when another drain holds the store, instead of waiting")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
}

func (c *drainCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("drain takes no arguments")
	}
	t, err := handover.OpenTPM(env.Global.TPM)
	if err != nil {
		return err
	}
	defer t.Close()
	res, err := handover.Drain(ctx, handover.DrainOptions{
		Paths:    handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc},
		StoreDir: c.store,
		Backend:  handover.Backend(c.backend),
		TPM:      t,
		NoWait:   c.noWait,
	})
	if err != nil {
		if errors.Is(err, handover.ErrTampered) || errors.Is(err, handover.ErrStoreMismatch) || errors.Is(err, handover.ErrGap) {
			return notVerified(err)
		}
		return err
	}
	if c.json {
		return writeJSON(env.Stdout, drainJSON(res))
	}
	fmt.Fprintf(env.Stdout, "%s\n", res)
	return nil
}

type drainOut struct {
	Backend    string                       `json:"backend"`
	Store      string                       `json:"store"`
	Archived   string                       `json:"archived,omitempty"`
	BootID     string                       `json:"boot_id"`
	Generation int                          `json:"generation"`
	Held       uint64                       `json:"held"`
	Retained   uint64                       `json:"retained"`
	Stored     uint64                       `json:"stored"`
	Deleted    uint64                       `json:"deleted"`
	Resolved   uint64                       `json:"resolved"`
	Suspended  bool                         `json:"suspended"`
	Segments   []int                        `json:"segments"`
	Chain      uint64                       `json:"chain_records"`
	PCRs       map[string]map[string]string `json:"pcrs"`
	Note       string                       `json:"note,omitempty"`
}

func drainJSON(r *handover.DrainResult) drainOut {
	o := drainOut{Backend: string(r.Backend), Store: r.StoreDir, Archived: r.Archived, BootID: r.BootID, Generation: r.Generation,
		Held: r.Held, Retained: r.Retained, Stored: r.Stored, Deleted: r.Deleted, Resolved: r.Resolved, Suspended: r.Suspended,
		Segments: []int{}, Chain: r.Chain, PCRs: pcrJSON(r.PCRs), Note: r.Note}
	for _, s := range r.Segments {
		o.Segments = append(o.Segments, s.Number)
	}
	return o
}
