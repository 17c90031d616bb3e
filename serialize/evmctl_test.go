package serialize_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

// TestEvmctlAgrees: our binary output of a list replays, under evmctl, to the PCRs we
// compute, over the whole list (not a prefix); and evmctl rejects a list we changed.
func TestEvmctlAgrees(t *testing.T) {
	testenv.LookPath(t, "evmctl", "ima-evm-utils")
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
			testenv.EvmctlWhole(t, ours.Bytes(), res.PCRs, len(recs))
			// Drop the last record: neither we nor evmctl may call that a match.
			short := ours.Bytes()[:ours.Len()-serialize.RecordSize(&recs[len(recs)-1], 20)]
			if _, _, err := testenv.Evmctl(t, short, res.PCRs); err == nil {
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
