// Package testenv holds the one place where tests decide to skip for a missing tool.
// A test that needs a tool the README's set-up installs skips with the reason on a
// developer's machine, and fails under CI (InCI), where nothing may be skipped.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI: $CI is set and is not "false" or "0" (CI
// services set CI=true; `make test` on CI sets it too). It is the one rule: in CI a missing
// prerequisite fails the test, it never skips it.
func InCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// Missing skips the test (or fails it under CI) with the reason.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
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

// Unavailable is Missing for a prerequisite that no package provides (a kernel feature,
// a second CPU): it skips with the reason, or fails under CI.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI must not skip: "+format, args...)
	}
	t.Skipf(format, args...)
}
