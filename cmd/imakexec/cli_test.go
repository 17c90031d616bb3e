package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the CLI in-process and returns exit code, stdout and stderr.
func runCLI(t testing.TB, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), &Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb}, args)
	return code, out.String(), errb.String()
}

const vm = "../../serialize/testdata/vm/"

func TestReplayCLI(t *testing.T) {
	list := vm + "ima-sig/binary_runtime_measurements"
	pcrs := []string{"--pcrs", "sha1," + vm + "ima-sig/pcrs-sha1.txt", "--pcrs", "sha256," + vm + "ima-sig/pcrs-sha256.txt"}
	code, out, stderr := runCLI(t, "", append([]string{"replay", "--json", list}, pcrs...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var js struct {
		Records    int                          `json:"records"`
		Violations int                          `json:"violations"`
		PCRs       map[string]map[string]string `json:"pcrs"`
		Verified   bool                         `json:"verified"`
	}
	if err := json.Unmarshal([]byte(out), &js); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, out)
	}
	if js.Records != 14 || js.Violations != 2 || !js.Verified || len(js.PCRs["10"]["sha256"]) != 64 {
		t.Fatalf("unexpected %+v", js)
	}
	// The same list from stdin, as ASCII, gives the same values.
	ascii, _ := os.ReadFile(vm + "ima-sig/ascii_runtime_measurements")
	code, out2, _ := runCLI(t, string(ascii), "replay", "--json", "-")
	if code != 0 || !strings.Contains(out2, js.PCRs["10"]["sha256"]) {
		t.Fatalf("ascii from stdin: exit %d\n%s", code, out2)
	}
	// Debian kernel after kexec: the new list alone does not verify (exit 1), old+new does.
	after := vm + "kexec-debian/after/"
	apcrs := []string{"--pcrs", "sha1," + after + "pcrs-sha1.txt", "--pcrs", "sha256," + after + "pcrs-sha256.txt"}
	if code, _, stderr := runCLI(t, "", append([]string{"replay", after + "binary_runtime_measurements"}, apcrs...)...); code != 1 || !strings.Contains(stderr, "PCR 10") {
		t.Fatalf("after alone: exit %d, %s", code, stderr)
	}
	if code, _, stderr := runCLI(t, "", append([]string{"replay", vm + "kexec-debian/before/binary_runtime_measurements", after + "binary_runtime_measurements"}, apcrs...)...); code != 0 {
		t.Fatalf("before+after: exit %d, %s", code, stderr)
	}
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("\x0a\x00\x00\x00garbage that is not a list"), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{}, 2, "Usage"},
		{[]string{"nosuch"}, 2, "unknown command"},
		{[]string{"replay"}, 2, "no input file"},
		{[]string{"replay", "--banks", "md4", bad}, 2, "unknown or unsupported bank"},
		{[]string{"replay", filepath.Join(dir, "missing")}, 2, "no such file"},
		{[]string{"replay", bad}, 2, "not an IMA"},
		{[]string{"replay", "--format", "binary", bad}, 2, "at byte"},
		{[]string{"convert", bad}, 2, "--to"},
		{[]string{"replay", "--help"}, 0, "--banks"},
		{[]string{"version"}, 0, ""},
	} {
		code, _, stderr := runCLI(t, "", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d (want %d), stderr %q lacks %q", tc.args, code, tc.code, stderr, tc.msg)
		}
	}
}

func TestConvertCLI(t *testing.T) {
	dir := t.TempDir()
	list := vm + "custom-fmt/binary_runtime_measurements"
	orig, _ := os.ReadFile(list)
	k := filepath.Join(dir, "k")
	b := filepath.Join(dir, "b")
	for _, args := range [][]string{{"convert", "--to", "kexec", list, k}, {"convert", "--to", "binary", k, b}} {
		if code, _, stderr := runCLI(t, "", args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	back, _ := os.ReadFile(b)
	if !bytes.Equal(back, orig) {
		t.Fatal("binary -> kexec -> binary differs")
	}
	code, out, stderr := runCLI(t, "", "convert", "--to", "ascii", list)
	want, _ := os.ReadFile(vm + "custom-fmt/ascii_runtime_measurements")
	if code != 0 || out != string(want) {
		t.Fatalf("ascii: exit %d %s", code, stderr)
	}
	// A sha256 list converts to a sha256 ASCII list and replays to the same PCRs.
	s256 := filepath.Join(dir, "s256")
	if code, _, stderr := runCLI(t, "", "convert", "--to", "binary", "--bank", "sha256", list, s256); code != 0 {
		t.Fatal(stderr)
	}
	_, j1, _ := runCLI(t, "", "replay", "--json", list)
	_, j2, _ := runCLI(t, "", "replay", "--json", s256)
	if j1 != j2 || j1 == "" {
		t.Fatalf("sha256 list replays differently:\n%s\n%s", j1, j2)
	}
}
