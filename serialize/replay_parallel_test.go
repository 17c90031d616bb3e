package serialize_test

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/internal/testenv"
	"github.com/imakexec/imakexec/serialize"
)

var allBanks = []serialize.Bank{serialize.SHA1, serialize.SHA256, serialize.SHA384, serialize.SHA512}

// TestParallelAdderEqualsAdd feeds the same list (several batches long, with violations,
// ima-buf records and PCRs other than 10) to Replayer.Add one by one and to a
// ParallelAdder, from a start state; counts, touched PCRs and values must be identical.
func TestParallelAdderEqualsAdd(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		testenv.Unavailable(t, "GOMAXPROCS < 2: ParallelAdder runs serially")
	}
	list := genList(t, 9000, listgen.Options{Seed: 11, Template: "ima-sig", SigEvery: 5, BufferEvery: 9, ViolationEvery: 70})
	start := serialize.PCRValues{}
	for _, b := range allBanks {
		start.Set(10, b.Name, bytes.Repeat([]byte{7}, b.Size))
	}
	opts := serialize.ReplayOptions{Banks: allBanks, Start: start, DigestBank: &serialize.SHA1}
	serial, _ := serialize.NewReplayer(opts)
	par, _ := serialize.NewReplayer(opts)
	src := serialize.NewBinaryReader(bytes.NewReader(list), le, 20)
	a := par.Parallel()
	for i := 0; ; i++ {
		rec, err := src.Next()
		if err != nil {
			break
		}
		// A few records into other PCRs; the reader's record is reused by the next call,
		// so the adder must copy it.
		if i%1000 == 3 {
			rec.PCR = 11
		}
		if err := serial.Add(rec); err != nil {
			t.Fatal(err)
		}
		if err := a.Add(rec); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if par.Records() != serial.Records() || par.Violations() != serial.Violations() || serial.Violations() == 0 {
		t.Fatalf("parallel %d records/%d violations, serial %d/%d", par.Records(), par.Violations(), serial.Records(), serial.Violations())
	}
	if got, want := par.Touched(), serial.Touched(); len(got) != 2 || len(want) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("touched %v, want %v", got, want)
	}
	if _, err := par.Result().Verify(serial.State()); err != nil {
		t.Fatalf("parallel replay differs from serial: %v", err)
	}
	// The replayer is usable again after Close, and a second Close is harmless.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Add(&serialize.Record{}); err == nil {
		t.Fatal("Add after Close succeeded")
	}
}

// TestParallelAdderErrors: a record whose stored digest does not match its data, several
// batches in, is reported with its index (from Add or Close), and so is a PCR out of range.
func TestParallelAdderErrors(t *testing.T) {
	list := genList(t, 6000, listgen.Options{Seed: 12})
	recs := readAll(t, serialize.NewBinaryReader(bytes.NewReader(list), le, 20))
	for _, tc := range []struct {
		name string
		edit func(r *serialize.Record)
		want error
	}{
		{"digest", func(r *serialize.Record) { r.Data[len(r.Data)-2] ^= 1 }, serialize.ErrDigestMismatch},
		{"pcr", func(r *serialize.Record) { r.PCR = serialize.MaxPCR }, serialize.ErrFormat},
	} {
		for _, banks := range [][]serialize.Bank{allBanks, {serialize.SHA1}} {
			t.Run(tc.name+"-"+banks[len(banks)-1].Name, func(t *testing.T) {
				const bad = 4321
				r, _ := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, DigestBank: &serialize.SHA1})
				a := r.Parallel()
				var err error
				for i := range recs {
					rec := recs[i].Clone()
					if i == bad {
						tc.edit(&rec)
					}
					if err = a.Add(&rec); err != nil {
						break
					}
				}
				if cerr := a.Close(); err == nil {
					err = cerr
				} else if cerr != err {
					t.Errorf("Close returned %v after Add returned %v", cerr, err)
				}
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "record 4321") {
					t.Fatalf("want %v at record 4321, got %v", tc.want, err)
				}
			})
		}
	}
}
