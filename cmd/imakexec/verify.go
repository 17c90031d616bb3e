package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/serialize"
)

// verifyCmd replays the store and the live list against the TPM.
type verifyCmd struct {
	store, proc, handoff string
	pcrs                 []string
	json                 bool
}

func init() { register(&verifyCmd{}) }

func (*verifyCmd) Name() string { return "verify" }
func (*verifyCmd) Synopsis() string {
	return "replay the stored chain and the live list against the TPM in every bank"
}
func (*verifyCmd) Usage() string { return "[--store DIR] [--pcrs [BANK,]FILE]... [--json]" }

func (c *verifyCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point")
	fs.StringVar(&c.handoff, "handoff", "", "old kernel's handoff directory, for a boot rejoin has not joined yet")
	fs.StringArrayVar(&c.pcrs, "pcrs", nil, "expected PCR values instead of the TPM's: [BANK,]FILE in evmctl's \"PCR-NN: hex\" format (repeatable; the bank is told by the digest size when not given). The banks compared are the banks given; they must hold every PCR the records extend")
	fs.BoolVar(&c.json, "json", false, "print one JSON object")
}

func (c *verifyCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("verify takes no arguments")
	}
	o := handover.VerifyOptions{Paths: handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}, StoreDir: c.store}
	if len(c.pcrs) > 0 {
		v, err := readPCRSpecs(c.pcrs)
		if err != nil {
			return err
		}
		o.PCRs = v
	} else {
		t, err := handover.OpenTPM(env.Global.TPM)
		if err != nil {
			return err
		}
		defer t.Close()
		o.TPM = t
	}
	if c.handoff != "" {
		h, err := initramfs.ReadHandoff(c.handoff)
		if err != nil && !errors.Is(err, initramfs.ErrNoHandoff) {
			return notVerified(err)
		}
		o.Window = handover.WindowFromHandoff(h, handover.ReadProcCmdline(handover.Paths{Proc: c.proc}))
	}
	res, cause, err := verdict(handover.Verify(ctx, o))
	if err != nil {
		return err
	}
	if c.json {
		out := verifyJSON(res, cause)
		out["keylime"] = keylimeCompat(ctx, o.Paths, c.store)
		if err := writeJSON(env.Stdout, out); err != nil {
			return err
		}
	} else {
		printVerify(env, res, cause)
	}
	if cause != nil {
		return notVerified(cause)
	}
	return nil
}

// verdict splits handover.Verify's answer into the result, why it does not verify (nil
// when it does), and an error that kept the check from running.
func verdict(v *handover.Verified, err error) (*handover.VerifyResult, error, error) {
	var nv *handover.NotVerifiedError
	switch {
	case errors.As(err, &nv):
		return nv.Result, nv.Err, nil
	case err != nil:
		return nil, nil, err
	}
	return &v.VerifyResult, nil, nil
}

// readPCRSpecs reads [BANK,]FILE values; without a bank the digest size names it.
func readPCRSpecs(specs []string) (serialize.PCRValues, error) {
	v := serialize.PCRValues{}
	for _, s := range specs {
		bankName, file, ok := strings.Cut(s, ",")
		if !ok {
			file = s
			b, err := os.ReadFile(file)
			if err != nil {
				return nil, err
			}
			bankName = "sha1"
			if line, _, _ := strings.Cut(string(b), "\n"); len(strings.TrimSpace(line[strings.LastIndex(line, " ")+1:])) == 64 {
				bankName = "sha256"
			}
		}
		bank, err := serialize.ParseBank(bankName)
		if err != nil {
			return nil, usageErrorf("%v", err)
		}
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		err = serialize.ParsePCRFile(f, bank, v)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	return v, nil
}

func verifyJSON(r *handover.VerifyResult, cause error) map[string]any {
	out := map[string]any{"verified": cause == nil, "records": r.Records, "stored": r.Stored, "live": r.Live,
		"extra": r.Extra, "pcrs": pcrJSON(r.PCRs), "boundaries": r.Boundaries}
	var banks []string
	for _, b := range r.Banks {
		banks = append(banks, b.Name)
	}
	out["banks"] = banks
	if len(r.Warnings) > 0 {
		out["warnings"] = r.Warnings
	}
	if r.Join != "" {
		out["join"] = r.Join
	}
	if len(r.NotCompared) > 0 {
		out["not_compared"] = r.NotCompared
	}
	if cause != nil {
		out["error"] = cause.Error()
		var re *serialize.ReplayError
		if errors.As(cause, &re) {
			out["bank"], out["pcr"], out["record"] = re.Bank, re.PCR, re.Record
			out["expected"], out["got"] = fmt.Sprintf("%x", re.Expected), fmt.Sprintf("%x", re.Got)
		}
		var te *handover.TamperError
		if errors.As(cause, &te) {
			out["file"], out["what"] = te.File, te.What
		}
	}
	return out
}

func printVerify(env *Env, r *handover.VerifyResult, cause error) {
	if cause == nil {
		fmt.Fprintf(env.Stdout, "verified: %d records (%d stored, %d live) replay to the TPM in %d banks\n", r.Records, r.Stored, r.Live, len(r.Banks))
	} else {
		fmt.Fprintf(env.Stdout, "NOT VERIFIED: %v\n", cause)
	}
	printPCRs(env.Stdout, r.PCRs, r.Banks)
	for _, w := range r.NotCompared {
		fmt.Fprintf(env.Stdout, "not compared: %s\n", w)
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(env.Stdout, "warning: %s\n", w)
	}
}
