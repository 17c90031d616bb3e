package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
)

// rejoinCmd joins the running kernel's list to the chain, once per boot.
type rejoinCmd struct {
	store, proc, handoff, backend string
	json                          bool
}

func init() { register(&rejoinCmd{}) }

func (*rejoinCmd) Name() string { return "rejoin" }
func (*rejoinCmd) Synopsis() string {
	return "join this boot's IMA list to the stored chain and prove it against the TPM"
}
func (*rejoinCmd) Usage() string { return "[--store DIR] [--handoff DIR] [--json]" }

func (c *rejoinCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point")
	fs.StringVar(&c.handoff, "handoff", "", "directory of the old kernel's handoff, which describes the kexec window (default: "+KeptHandoffDir+", then /"+initramfs.HandoffDir+", then STORE/handoff)")
	fs.StringVar(&c.backend, "backend", "auto", "kernel interface for the drain that follows the join")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
}

func (c *rejoinCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("rejoin takes no arguments")
	}
	// Without --handoff: the copy the initramfs kept, its /imakexec, or beside the store.
	h, _, err := findHandoff(c.handoff, c.store)
	if err == nil {
		err = checkDiskStore(h, c.store)
	}
	if err != nil {
		return notVerified(err)
	}
	t, err := handover.OpenTPM(env.Global.TPM)
	if err != nil {
		return err
	}
	defer t.Close()
	paths := handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}
	res, err := handover.Rejoin(ctx, handover.RejoinOptions{Paths: paths, StoreDir: c.store, TPM: t,
		Window: handover.WindowFromHandoff(h, handover.ReadProcCmdline(handover.Paths{Proc: c.proc})), Backend: handover.Backend(c.backend)})
	err = explainJoinError(err, h)
	if c.json {
		out := map[string]any{"joined": err == nil}
		if res != nil {
			out["boot_id"], out["generation"], out["description"] = res.BootID, res.Generation, res.Description
			out["archived"], out["new_chain"], out["already_joined"] = res.Archived, res.NewChain, res.AlreadyJoined
			if res.Join != nil {
				out["join"] = res.Join
			}
			if res.Verify != nil {
				out["verify"] = verifyJSON(&res.Verify.VerifyResult, nil)
			} else if nv := notVerifiedResult(err); nv != nil {
				out["verify"] = verifyJSON(nv.Result, nv.Err)
			}
		}
		if err != nil {
			out["error"] = err.Error()
		}
		if jerr := writeJSON(env.Stdout, out); jerr != nil {
			return jerr
		}
	} else if res != nil {
		if res.Archived != "" {
			fmt.Fprintf(env.Stdout, "cold boot: the store of another TPM power cycle was archived as %s\n", res.Archived)
		}
		fmt.Fprintf(env.Stdout, "boot %s generation %d: %s\n", res.BootID, res.Generation, res.Description)
		if res.Verify != nil {
			printVerify(env, &res.Verify.VerifyResult, nil)
		} else if nv := notVerifiedResult(err); nv != nil {
			printVerify(env, nv.Result, nv.Err)
		}
	}
	if err != nil {
		return rejoinExit(err)
	}
	return nil
}

// rejoinExit maps "does not verify" causes to exit 1.
func rejoinExit(err error) error {
	if handover.IsNotVerified(err) {
		return notVerified(err)
	}
	return err
}

// notVerifiedResult is the partial result a failed proof carries, nil for other errors.
func notVerifiedResult(err error) *handover.NotVerifiedError {
	var nv *handover.NotVerifiedError
	if errors.As(err, &nv) && nv.Result != nil {
		return nv
	}
	return nil
}
