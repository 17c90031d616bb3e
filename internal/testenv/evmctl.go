package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/imakexec/imakexec/serialize"
)

var evmctlMatch = regexp.MustCompile(`(?m)^(\w+) PCR-10: succeed at entry (\d+)$`)

// Evmctl runs `evmctl ima_measurement --ignore-violations` (ima-evm-utils, an independent
// implementation) on a binary SHA1 list against PCR values of the sha1 and sha256 banks.
// It returns, per bank, the entry at which evmctl said PCR 10 matched, and its output.
// evmctl 1.4 succeeds at the first matching prefix, so callers compare the entry with the
// record count. A missing evmctl skips the test (fails under CI).
func Evmctl(t testing.TB, list []byte, pcrs serialize.PCRValues) (map[string]int, string, error) {
	t.Helper()
	evmctl := LookPath(t, "evmctl", "ima-evm-utils")
	dir := t.TempDir()
	lp := filepath.Join(dir, "list")
	if err := os.WriteFile(lp, list, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-v", "ima_measurement", "--ignore-violations"}
	for _, b := range []serialize.Bank{serialize.SHA1, serialize.SHA256} {
		var f bytes.Buffer
		if err := serialize.WritePCRFile(&f, b, pcrs); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "pcrs-"+b.Name)
		if err := os.WriteFile(p, f.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--pcrs", b.Name+","+p)
	}
	out, err := exec.Command(evmctl, append(args, lp)...).CombinedOutput()
	got := map[string]int{}
	for _, m := range evmctlMatch.FindAllStringSubmatch(string(out), -1) {
		got[m[1]], _ = strconv.Atoi(m[2])
	}
	return got, string(out), err
}

// EvmctlWhole fails the test unless evmctl matches the whole list of records records in
// both banks.
func EvmctlWhole(t testing.TB, list []byte, pcrs serialize.PCRValues, records int) {
	t.Helper()
	got, out, err := Evmctl(t, list, pcrs)
	if err != nil {
		t.Fatalf("evmctl rejects the list: %v\n%s", err, out)
	}
	for _, b := range []string{"sha1", "sha256"} {
		if got[b] != records {
			t.Fatalf("evmctl %s matched at entry %d of %d records\n%s", b, got[b], records, out)
		}
	}
}
