package serialize_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

// evmctlMatch runs `evmctl ima_measurement` (ima-evm-utils, an independent
// implementation) on list against our PCR values and returns, per bank, the entry count
// at which evmctl says the list matched. evmctl 1.4 succeeds at the first matching
// prefix, so callers compare that count with the record count.
func evmctlMatch(t *testing.T, evmctl string, list []byte, pcrs serialize.PCRValues) (map[string]int, error) {
	t.Helper()
	dir := t.TempDir()
	lp := filepath.Join(dir, "list")
	if err := os.WriteFile(lp, list, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-v", "ima_measurement", "--ignore-violations"}
	for _, b := range []serialize.Bank{serialize.SHA1, serialize.SHA256} {
		var buf bytes.Buffer
		if err := serialize.WritePCRFile(&buf, b, pcrs); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "pcrs-"+b.Name)
		os.WriteFile(p, buf.Bytes(), 0o600)
		args = append(args, "--pcrs", b.Name+","+p)
	}
	out, err := exec.Command(evmctl, append(args, lp)...).CombinedOutput()
	got := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^(\w+) PCR-10: succeed at entry (\d+)$`).FindAllStringSubmatch(string(out), -1) {
		got[m[1]], _ = strconv.Atoi(m[2])
	}
	if err != nil {
		return got, &evmctlError{err, string(out)}
	}
	return got, nil
}

type evmctlError struct {
	err error
	out string
}

func (e *evmctlError) Error() string { return e.err.Error() + ": " + e.out }

// TestEvmctlAgrees: our binary output of a list replays, under evmctl, to the PCRs we
// compute, over the whole list (not a prefix); and evmctl rejects a list we changed.
func TestEvmctlAgrees(t *testing.T) {
	evmctl := testenv.LookPath(t, "evmctl", "ima-evm-utils")
	type input struct {
		name string
		list []byte
	}
	var inputs []input
	for _, c := range loadCaptures(t) {
		if c.name == "ima-sha1-buf" {
			continue // evmctl refuses lists mixing "ima" with other templates
		}
		inputs = append(inputs, input{c.name, c.list})
	}
	inputs = append(inputs,
		input{"generated-ima-ng", genList(t, 3000, listgen.Options{Seed: 21, ViolationEvery: 97})},
		input{"generated-ima-sig-buf", genList(t, 3000, listgen.Options{Seed: 22, Template: "ima-sig", SigEvery: 2, BufferEvery: 13})},
		input{"generated-custom", genList(t, 500, listgen.Options{Seed: 23, Template: "d-ng|n-ng|sig|iuid|igid|imode"})},
	)
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			// Our output: through the kexec format and back, from our writers.
			recs := readAll(t, serialize.NewBinaryReader(bytes.NewReader(in.list), le, 20))
			f, _ := os.CreateTemp(t.TempDir(), "k")
			kw, _ := serialize.NewKexecWriter(f, le, nil)
			for i := range recs {
				kw.Write(&recs[i])
			}
			kw.Close()
			f.Seek(0, 0)
			kr, err := serialize.NewKexecReader(f, le)
			if err != nil {
				t.Fatal(err)
			}
			var ours bytes.Buffer
			bw := serialize.NewBinaryWriter(&ours, le, serialize.SHA1, nil)
			bw.Recompute = true // digests from our Digester, not copied
			for _, r := range readAll(t, kr) {
				bw.Write(&r)
			}
			bw.Flush()
			res, err := replayBytes(ours.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			got, err := evmctlMatch(t, evmctl, ours.Bytes(), res.PCRs)
			if err != nil {
				t.Fatalf("evmctl rejects our list with our PCRs: %v", err)
			}
			for _, b := range []string{"sha1", "sha256"} {
				if got[b] != len(recs) {
					t.Errorf("evmctl %s matched at entry %d of %d", b, got[b], len(recs))
				}
			}
			// Drop the last record: neither we nor evmctl may call that a match.
			short := ours.Bytes()[:ours.Len()-serialize.RecordSize(&recs[len(recs)-1], 20)]
			if _, err := evmctlMatch(t, evmctl, short, res.PCRs); err == nil {
				t.Error("evmctl accepted the list without its last record")
			}
			if r2, _ := replayBytes(short); r2 != nil {
				if _, err := r2.Verify(res.PCRs); err == nil {
					t.Error("our replay accepted the list without its last record")
				}
			}
		})
	}
}
