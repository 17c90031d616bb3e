//go:build linux

// Command conform is a test VM's /init that runs the conformance table (package
// testvm/conformance) against the running kernel and sends the rows back as the JSON blob
// "conformance" through the data port, then powers off.
//
// Kernel command line: conform.kind=staging|debian (the configuration the host expects;
// the rows are compared on the host, not here).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/imakexec/imakexec/testvm/conformance"
	"github.com/imakexec/imakexec/testvm/guestlib"
)

// env is the running kernel. Measure reads fresh files on /tmp as root, which the test
// policy measures with FILE_CHECK; nothing else the program does is measured (securityfs,
// proc and sysfs are excluded by the policy).
type env struct{ n int }

func (e *env) IMADir() string { return guestlib.IMADir }

func (e *env) Measure(n int) error {
	for i := 0; i < n; i++ {
		e.n++
		p := filepath.Join("/tmp", fmt.Sprintf("conform-%d", e.n))
		if err := os.WriteFile(p, []byte(fmt.Sprintf("conformance record %d\n", e.n)), 0o644); err != nil {
			return err
		}
		if _, err := os.ReadFile(p); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) Suspend() error { return conformance.ErrCannotSuspend }

func main() {
	g := guestlib.Start()
	kind := conformance.Kind(g.Arg("conform.kind", string(conformance.Staging)))
	if err := guestlib.WritePolicy(guestlib.IMADir, guestlib.TestPolicy); err != nil {
		g.Fatalf("%v", err)
	}
	rows := conformance.Run(&env{}, kind)
	b, err := json.Marshal(rows)
	if err != nil {
		g.Fatalf("%v", err)
	}
	if err := g.Blob("conformance", b); err != nil {
		g.Fatalf("%v", err)
	}
	g.Mark("done %d rows", len(rows))
	g.Poweroff()
}
