package main

import (
	"context"
	"fmt"
	"runtime/debug"

	"github.com/spf13/pflag"
)

// version is set with -ldflags "-X main.version=..."; otherwise the module version.
var version = ""

type versionCmd struct{}

func init() { register(versionCmd{}) }

func (versionCmd) Name() string            { return "version" }
func (versionCmd) Usage() string           { return "" }
func (versionCmd) Synopsis() string        { return "print the version" }
func (versionCmd) SetFlags(*pflag.FlagSet) {}
func (versionCmd) Run(_ context.Context, env *Env, _ []string) error {
	v := version
	if v == "" {
		v = "(devel)"
		if bi, ok := debug.ReadBuildInfo(); ok {
			if bi.Main.Version != "" {
				v = bi.Main.Version
			}
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v += " " + s.Value[:12]
				}
			}
		}
	}
	fmt.Fprintf(env.Stdout, "imakexec %s\n", v)
	return nil
}
