package view

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
)

// keylimeReplay finds Keylime's verifier replay: $IMAKEXEC_KEYLIME_REPLAY, else the copy
// of Keylime's own code in third_party/keylime (see its README), and a python3 with the
// modules it imports (the one on $PATH, else Debian's /usr/bin/python3). Missing pieces
// skip the test, or fail it under CI. It returns the python3 and the tool.
func keylimeReplay(t *testing.T) (string, string) {
	t.Helper()
	p := os.Getenv("IMAKEXEC_KEYLIME_REPLAY")
	if p == "" {
		root, err := testvm.RepoRoot()
		if err != nil {
			testenv.Missing(t, "Keylime's verifier replay: %v", err)
		}
		p = filepath.Join(root, "third_party", "keylime", "keylime-replay")
	}
	if _, err := os.Stat(p); err != nil {
		testenv.Missing(t, "Keylime's verifier replay is not at %s (third_party/keylime, or $IMAKEXEC_KEYLIME_REPLAY)", p)
	}
	py := testenv.LookPath(t, "python3", "python3")
	var why string
	for _, cand := range []string{py, "/usr/bin/python3"} {
		out, err := exec.Command(cand, "-c", "import jsonschema, packaging, cryptography").CombinedOutput()
		if err == nil {
			return cand, p
		}
		why += fmt.Sprintf("%s: %s; ", cand, strings.TrimSpace(string(out)))
	}
	testenv.Missing(t, "keylime-replay needs python3-jsonschema python3-packaging python3-cryptography: %s", why)
	return "", ""
}

type keylimeResult struct {
	OK       bool    `json:"ok"`
	Failures [][]any `json:"failures"`
	Entries  int     `json:"entries"`
	Error    string  `json:"error"`
}

// keylimePoll runs Keylime's replay on lines for one poll in bank, continuing from the
// state file when it exists and saving the state after an accepted poll.
func keylimePoll(t *testing.T, py, tool, dir string, bank serialize.Bank, lines []string, pcr10 []byte) keylimeResult {
	t.Helper()
	log := filepath.Join(dir, "poll-"+bank.Name)
	if err := os.WriteFile(log, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state-"+bank.Name)
	args := []string{tool, log, hex.EncodeToString(pcr10), bank.Name}
	if _, err := os.Stat(state); err == nil {
		args = append(args, "--from-state", state)
	}
	args = append(args, "--save-state", state)
	out, err := exec.Command(py, args...).Output()
	var r keylimeResult
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		t.Fatalf("keylime-replay: %v: %s", err, out)
	}
	if r.Error != "" {
		t.Fatalf("keylime-replay could not run: %s", r.Error)
	}
	return r
}

// Keylime's own verifier replay (keylime.ima.ima.process_measurement_list), one poll at a
// time from its saved state, accepts what the view serves in SHA1 and SHA256 across a 7.2
// deletion and a kexec with rejoin (the SHA1 list, quotes of both banks); it refuses the kernel's own list after the deletion
// (what an agent reading securityfs would send).
func TestKeylimeVerifierAcceptsView(t *testing.T) {
	py, tool := keylimeReplay(t)
	e := newEnv(t, kmodel.Config{Profile: kmodel.Profile72})
	e.work(12)
	e.rejoin(nil)
	e.serve()
	dir := t.TempDir()
	// Keylime reads the SHA1 list (column 2 in log_hash_alg, sha1 without a policy) and
	// replays it in the bank of the quote; one verifier state per bank.
	agents := map[string]*agent{}
	for _, b := range []serialize.Bank{serialize.SHA1, serialize.SHA256} {
		agents[b.Name] = newAgent(t, filepath.Join(e.mnt, "ascii_runtime_measurements"))
	}
	poll := func(what string) {
		t.Helper()
		for _, b := range []serialize.Bank{serialize.SHA1, serialize.SHA256} {
			a := agents[b.Name]
			lines, from, err := a.fetch(a.next)
			if err != nil || from != a.next {
				t.Fatalf("%s: agent fetch from %d: got from %d, %v", what, a.next, from, err)
			}
			pcr := e.tpmPCR10([]serialize.Bank{b}).Get(10, b.Name)
			r := keylimePoll(t, py, tool, dir, b, lines, pcr)
			if !r.OK || r.Entries != len(lines) {
				t.Fatalf("%s: Keylime's verifier refuses entries %d.. (%d lines) in %s: %v", what, a.next, len(lines), b.Name, r.Failures)
			}
			a.next += len(lines)
		}
	}
	poll("first poll")
	e.work(30)
	poll("live records")
	if r := e.drain(handover.BackendStaged); r.Deleted == 0 {
		t.Fatalf("drain deleted nothing: %+v", r)
	}
	e.work(6)
	poll("after a deletion")

	// The kernel's own list now starts after the deleted records: Keylime refuses it.
	kernelList, err := os.ReadFile(filepath.Join(e.paths.Securityfs, "integrity", "ima", "ascii_runtime_measurements"))
	if err != nil {
		t.Fatal(err)
	}
	kdir := t.TempDir()
	var klines []string
	for _, l := range strings.SplitAfter(string(kernelList), "\n") {
		if l != "" {
			klines = append(klines, l)
		}
	}
	if r := keylimePoll(t, py, tool, kdir, serialize.SHA1, klines, e.tpmPCR10([]serialize.Bank{serialize.SHA1}).Get(10, "sha1")); r.OK {
		t.Fatalf("Keylime accepted the kernel's list after a deletion (%d lines): the negative control does not work", len(klines))
	}

	w := e.kexecJump(func() { poll("kexec loaded") })
	e.rejoin(w)
	poll("after kexec and rejoin")
	e.work(9)
	e.drain("auto")
	poll("new boot, drained")
}
