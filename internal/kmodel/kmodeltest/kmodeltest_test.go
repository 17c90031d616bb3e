package kmodeltest_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

func TestMountSmoke(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
	if _, err := env.Kernel.Exec("/bin/true", []byte("true")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(env.Securityfs, "ima", "binary_runtime_measurements_sha256"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := serialize.Replay(serialize.NewBinaryReader(bytes.NewReader(b), serialize.NewDigester().Order, 32),
		serialize.ReplayOptions{Banks: []serialize.Bank{serialize.SHA256}, DigestBank: &serialize.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if res.Records != 2 {
		t.Fatalf("records %d", res.Records)
	}
	// Through the socket.
	tp, err := linuxudstpm.Open(env.TPMSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	pcrs, err := kmodel.ReadPCRs(tp, []serialize.Bank{serialize.SHA256}, []uint32{10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Verify(pcrs); err != nil {
		t.Fatal(err)
	}
}
