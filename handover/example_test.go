package handover_test

import (
	"context"
	"fmt"
	"io"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/serialize"
)

// A verifier opens a store, iterates the chain and replays it incrementally: it keeps the
// replay state after the records it has checked, and later continues from there.
func Example_verifier() {
	// testdata/store: a chain over two kexecs of a Debian 6.1 kernel model (see
	// TestWriteExampleStore).
	chain, err := handover.OpenChain(context.Background(), handover.ChainOptions{StoreDir: "testdata/store", StoreOnly: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer chain.Close()
	banks, _ := chain.Banks()

	// First round: the first 20 records.
	r, _ := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, DigestBank: &serialize.SHA1})
	for i := 0; i < 20; i++ {
		rec, err := chain.Next()
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := r.Add(rec); err != nil {
			fmt.Println(err)
			return
		}
	}
	state := r.State() // what the verifier keeps

	// Second round, later: continue from the kept state.
	r2, _ := serialize.NewReplayer(serialize.ReplayOptions{Banks: banks, Start: state, DigestBank: &serialize.SHA1})
	for {
		rec, err := chain.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		if err := r2.Add(rec); err != nil {
			fmt.Println(err)
			return
		}
	}
	// The store's own replayed values must agree; against a TPM, use Result().Verify or
	// handover.Verify.
	stored, _ := chain.Store().PCRs()
	_, err = r2.Result().Verify(stored)
	fmt.Printf("%d + %d records; matches the store: %v\n", r.Records(), r2.Records(), err == nil)
	// Output: 20 + 9 records; matches the store: true
}
