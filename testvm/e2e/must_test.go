package e2e_test

import (
	"testing"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm/e2e"
)

// mustBlob returns a blob of a generation, failing the test when the guest did not send it
// (a negative assertion on a missing blob must not pass).
func mustBlob(t *testing.T, g *e2e.Gen, name string) []byte {
	t.Helper()
	b, ok := g.Blob(name)
	if !ok {
		t.Fatalf("gen %d sent no %s", g.N, name)
	}
	return b
}

func mustList(t *testing.T, g *e2e.Gen, name string) []serialize.Record {
	t.Helper()
	recs, err := e2e.ReadList(mustBlob(t, g, name))
	if err != nil {
		t.Fatalf("gen %d %s: %v", g.N, name, err)
	}
	return recs
}

// finalPCRs are the PCRs the last snapshot of g read, both banks present.
func finalPCRs(t *testing.T, g *e2e.Gen) serialize.PCRValues {
	t.Helper()
	pcrs, err := e2e.ReadPCRs(mustBlob(t, g, "final/pcrs-sha1.txt"), mustBlob(t, g, "final/pcrs-sha256.txt"))
	if err != nil {
		t.Fatalf("gen %d final PCRs: %v", g.N, err)
	}
	if len(pcrs[10]["sha1"]) == 0 || len(pcrs[10]["sha256"]) == 0 {
		t.Fatalf("gen %d final PCRs lack PCR 10 in sha1 or sha256", g.N)
	}
	return pcrs
}

// mustMatch reports whether recs replay to pcrs; a replay that cannot run fails the test
// rather than count as "does not match".
func mustMatch(t *testing.T, recs []serialize.Record, pcrs serialize.PCRValues) bool {
	t.Helper()
	ok, err := e2e.Matches(recs, pcrs)
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	return ok
}
