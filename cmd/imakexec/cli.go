package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/serialize"
)

// Exit codes (README "Exit codes").
const (
	exitOK          = 0
	exitNotVerified = 1 // the input does not replay/verify where a check was asked for
	exitError       = 2 // bad usage, unreadable or malformed input, could not run
)

// Env is what a command may touch besides the file system and the kernel.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Global         *globalFlags
}

// globalFlags are accepted before the subcommand and by every subcommand.
type globalFlags struct {
	Securityfs string // securityfs mount point; IMA files are under integrity/ima/ or ima/
	TPM        string // TPM device, or unix:SOCKET for a raw TPM 2.0 command socket
	Verbose    bool
}

func (g *globalFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.Securityfs, "securityfs", "/sys/kernel/security", "securityfs mount point (IMA files under integrity/ima/ or ima/)")
	fs.StringVar(&g.TPM, "tpm", "/dev/tpmrm0", "TPM device, or unix:SOCKET for a socket speaking raw TPM 2.0 commands")
	fs.BoolVarP(&g.Verbose, "verbose", "v", false, "log more on stderr")
}

// command is one subcommand: a small type with its flags beside it.
type command interface {
	Name() string
	Synopsis() string // one line for the command list
	Usage() string    // arguments after the flags, e.g. "[flags] FILE..."
	SetFlags(fs *pflag.FlagSet)
	Run(ctx context.Context, env *Env, args []string) error
}

var commands = map[string]command{}

func register(c command) { commands[c.Name()] = c }

// errUsage marks a usage error (exit 2, usage printed).
var errUsage = errors.New("usage")

func usageErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// errNotVerified marks a verification failure (exit 1).
var errNotVerified = errors.New("not verified")

// notVerified wraps err so that it exits 1.
func notVerified(err error) error { return fmt.Errorf("%w: %w", errNotVerified, err) }

func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errNotVerified), errors.Is(err, serialize.ErrMismatch), errors.Is(err, serialize.ErrDigestMismatch):
		return exitNotVerified
	default:
		return exitError
	}
}

func run(ctx context.Context, env *Env, args []string) int {
	g := &globalFlags{}
	env.Global = g
	top := pflag.NewFlagSet("imakexec", pflag.ContinueOnError)
	top.SetOutput(env.Stderr)
	top.SetInterspersed(false)
	g.register(top)
	top.Usage = func() { topUsage(env.Stderr, top) }
	if err := top.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(env.Stderr, "imakexec: %v\n", err)
		top.Usage()
		return exitError
	}
	if top.NArg() == 0 {
		top.Usage()
		return exitError
	}
	name := top.Arg(0)
	if name == "help" {
		if top.NArg() > 1 {
			if c, ok := commands[top.Arg(1)]; ok {
				fs := commandFlags(c, g, env)
				fs.Usage()
				return exitOK
			}
		}
		topUsage(env.Stdout, top)
		return exitOK
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(env.Stderr, "imakexec: unknown command %q\n", name)
		top.Usage()
		return exitError
	}
	fs := commandFlags(c, g, env)
	if err := fs.Parse(top.Args()[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK
		}
		fmt.Fprintf(env.Stderr, "imakexec %s: %v\n", name, err)
		fs.Usage()
		return exitError
	}
	err := c.Run(ctx, env, fs.Args())
	if err != nil {
		fmt.Fprintf(env.Stderr, "imakexec %s: %v\n", name, err)
		if errors.Is(err, errUsage) {
			fs.Usage()
		}
	}
	return exitCode(err)
}

func commandFlags(c command, g *globalFlags, env *Env) *pflag.FlagSet {
	fs := pflag.NewFlagSet("imakexec "+c.Name(), pflag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	c.SetFlags(fs)
	gfs := pflag.NewFlagSet("global", pflag.ContinueOnError)
	(&globalFlags{}).register(gfs) // not g: registering resets the values parsed before the subcommand
	// Share the values parsed before the subcommand.
	gfs.VisitAll(func(f *pflag.Flag) {
		switch f.Name {
		case "securityfs":
			f.Value = stringValue{&g.Securityfs}
		case "tpm":
			f.Value = stringValue{&g.TPM}
		case "verbose":
			f.Value = boolValue{&g.Verbose}
		}
		f.DefValue = f.Value.String()
	})
	fs.AddFlagSet(gfs)
	fs.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: imakexec %s %s\n\n%s\n\nFlags:\n%s", c.Name(), c.Usage(), c.Synopsis(), fs.FlagUsages())
	}
	return fs
}

type stringValue struct{ p *string }

func (v stringValue) String() string     { return *v.p }
func (v stringValue) Set(s string) error { *v.p = s; return nil }
func (v stringValue) Type() string       { return "string" }

type boolValue struct{ p *bool }

func (v boolValue) String() string { return fmt.Sprint(*v.p) }
func (v boolValue) Set(s string) error {
	switch strings.ToLower(s) {
	case "true", "1", "":
		*v.p = true
	case "false", "0":
		*v.p = false
	default:
		return fmt.Errorf("invalid boolean %q", s)
	}
	return nil
}
func (v boolValue) Type() string { return "bool" }

// IsBoolFlag lets "--verbose" stand without a value.
func (v boolValue) IsBoolFlag() bool { return true }

func topUsage(w io.Writer, top *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: imakexec [global flags] COMMAND [flags] [args]\n\n")
	fmt.Fprintf(w, "imakexec keeps the IMA measurement log whole and verifiable across record deletion and kexec.\n\nCommands:\n")
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].Synopsis())
	}
	fmt.Fprintf(w, "\nGlobal flags:\n%s\nRun 'imakexec COMMAND --help' for a command's flags.\n", top.FlagUsages())
}

// writeJSON prints exactly one JSON object and a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// pcrJSON renders PCR values as {"10": {"sha1": "<hex>"}}.
func pcrJSON(v serialize.PCRValues) map[string]map[string]string {
	out := map[string]map[string]string{}
	for p, m := range v {
		k := fmt.Sprint(p)
		out[k] = map[string]string{}
		for b, d := range m {
			out[k][b] = fmt.Sprintf("%x", d)
		}
	}
	return out
}
