package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/serialize"
)

// replayCmd replays lists to PCR values, optionally checking them against a PCR file.
type replayCmd struct {
	format string
	banks  string
	scheme string
	json   bool
	pcrs   []string
	fs     *pflag.FlagSet
}

func init() { register(&replayCmd{}) }

func (*replayCmd) Name() string     { return "replay" }
func (*replayCmd) Usage() string    { return "[flags] FILE... (- for stdin)" }
func (*replayCmd) Synopsis() string { return "replay IMA lists (their concatenation) to PCR values" }

func (c *replayCmd) SetFlags(fs *pflag.FlagSet) {
	c.fs = fs
	fs.StringVar(&c.format, "format", "auto", "input format: auto, binary, ascii or kexec")
	fs.StringVar(&c.banks, "banks", "sha1,sha256", "banks to replay, comma-separated (sha1, sha256, sha384, sha512, tpm_alg_<hex>)")
	fs.StringVar(&c.scheme, "scheme", "hash", "extend scheme of the kernel: hash (5.8+) or pad (5.1-5.7, padded SHA1)")
	fs.BoolVar(&c.json, "json", false, "print one JSON object")
	fs.StringArrayVar(&c.pcrs, "pcrs", nil, "check against PCR values: BANK,FILE in evmctl's \"PCR-NN: hex\" format (repeatable); exit 1 when they differ")
}

func (c *replayCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 {
		return usageErrorf("no input file")
	}
	format, err := serialize.ParseFormatName(c.format)
	if err != nil {
		return usageErrorf("%v", err)
	}
	banks, err := serialize.ParseBanks(c.banks)
	if err != nil {
		return usageErrorf("%v", err)
	}
	scheme, err := serialize.ParseScheme(c.scheme)
	if err != nil {
		return usageErrorf("%v", err)
	}
	expected, err := readPCRFlags(c.pcrs)
	if err != nil {
		return err
	}
	if expected != nil && !c.fs.Changed("banks") {
		banks = banksOf(expected) // check exactly the banks the PCR files give
	}
	var r *serialize.Replayer
	for _, name := range args {
		if err := ctx.Err(); err != nil {
			return err
		}
		in, closeIn, err := openInput(env, name)
		if err != nil {
			return err
		}
		src, det, err := serialize.Open(in, format, digestSizeFromName(name))
		if err != nil {
			closeIn()
			return fmt.Errorf("%s: %w", name, err)
		}
		if r == nil {
			if r, err = serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Scheme: scheme, Order: det.Order}); err != nil {
				closeIn()
				return err
			}
		}
		r.SetDigestBank(digestBank(det, src))
		err = addAll(r, src)
		closeIn()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	res := r.Result()
	var verr error
	if expected != nil {
		_, verr = res.Verify(onlyReplayed(expected, res.PCRs))
	}
	if c.json {
		out := map[string]any{"records": res.Records, "violations": res.Violations, "pcrs": pcrJSON(res.PCRs)}
		if expected != nil {
			out["verified"] = verr == nil
			if verr != nil {
				out["error"] = verr.Error()
			}
		}
		if err := writeJSON(env.Stdout, out); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(env.Stdout, "records: %d\nviolations: %d\n", res.Records, res.Violations)
		printPCRs(env.Stdout, res.PCRs, r.Banks())
		if expected != nil && verr == nil {
			fmt.Fprintln(env.Stdout, "verified: replay equals the given PCR values")
		}
	}
	if verr != nil {
		return notVerified(verr)
	}
	return nil
}

// addAll adds the records of src. An ASCII list names its bank by the size of the digest
// on its first line, which sets the bank its stored digests are checked against.
func addAll(r *serialize.Replayer, src serialize.Source) error {
	if ar, ok := src.(*serialize.ASCIIReader); ok {
		first, err := ar.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if b, ok := bankBySize(ar.DigestSize()); ok {
			r.SetDigestBank(&b)
		}
		c := first.Clone()
		src = &pushback{rec: &c, src: ar}
	}
	return r.AddAll(src)
}

// digestBank is the bank of the digests a source carries, when it can be told.
func digestBank(det serialize.Detected, src serialize.Source) *serialize.Bank {
	if det.Format == serialize.FormatASCII {
		return nil // known after the first line
	}
	if b, ok := bankBySize(det.DigestSize); ok {
		return &b
	}
	return nil
}

// bankBySize maps a digest size to the bank a list file of that size shows. 32-byte digests
// could also be SM3 or SHA3-256 (tpm_alg_27); --bank names those.
func bankBySize(n int) (serialize.Bank, bool) {
	switch n {
	case 20:
		return serialize.SHA1, true
	case 32:
		return serialize.SHA256, true
	case 48:
		return serialize.SHA384, true
	case 64:
		return serialize.SHA512, true
	}
	return serialize.Bank{}, false
}

// digestSizeFromName reads the bank from kernel file names such as
// binary_runtime_measurements_sha256 (0 when the name says nothing).
func digestSizeFromName(name string) int {
	for _, suf := range []string{"_sha1", "_sha256", "_sha384", "_sha512"} {
		if len(name) > len(suf) && name[len(name)-len(suf):] == suf {
			b, _ := serialize.ParseBank(suf[1:])
			return b.Size
		}
	}
	return 0
}

func openInput(env *Env, name string) (io.Reader, func(), error) {
	if name == "-" {
		return env.Stdin, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

// readPCRFlags parses repeated BANK,FILE values.
func readPCRFlags(specs []string) (serialize.PCRValues, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	v := serialize.PCRValues{}
	for _, s := range specs {
		bankName, file, ok := strings.Cut(s, ",")
		if !ok {
			return nil, usageErrorf("--pcrs wants BANK,FILE, got %q", s)
		}
		b, err := serialize.ParseBank(bankName)
		if err != nil {
			return nil, usageErrorf("%v", err)
		}
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		err = serialize.ParsePCRFile(f, b, v)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	return v, nil
}

// banksOf lists the banks that have values in v.
func banksOf(v serialize.PCRValues) []serialize.Bank {
	seen := map[string]bool{}
	var out []serialize.Bank
	for _, m := range v {
		for name := range m {
			if b, err := serialize.ParseBank(name); err == nil && !seen[name] {
				seen[name] = true
				out = append(out, b)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TPMAlg < out[j].TPMAlg })
	return out
}

// onlyReplayed keeps the expected values of the PCRs the log touched, so a PCR file that
// lists all 24 PCRs can be used.
func onlyReplayed(expected, got serialize.PCRValues) serialize.PCRValues {
	out := serialize.PCRValues{}
	for p := range got {
		for b, v := range expected[p] {
			out.Set(p, b, v)
		}
	}
	return out
}

func printPCRs(w io.Writer, v serialize.PCRValues, banks []serialize.Bank) {
	var ps []int
	for p := range v {
		ps = append(ps, int(p))
	}
	sort.Ints(ps)
	for _, p := range ps {
		for _, b := range banks {
			if d := v.Get(uint32(p), b.Name); d != nil {
				fmt.Fprintf(w, "PCR-%02d %-7s %x\n", p, b.Name, d)
			}
		}
	}
}
