// Package testenv holds the one place where tests decide to skip for a missing tool.
// A test that needs a tool the README's set-up installs skips with the reason on a
// developer's machine, and fails under CI (env CI set), where nothing may be skipped.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Missing skips the test (or fails it under CI) with the reason.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI must not skip: "+format, args...)
	}
	t.Skipf(format+" (make test installs it)", args...)
}

// LookPath returns the path of a command, or skips/fails when it is not installed.
func LookPath(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "%s not found: install the Debian package %s", name, pkg)
	}
	return p
}
