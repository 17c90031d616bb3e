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

// TestProc: Env.Proc shows the running boot: a new boot id at every kexec and cold boot,
// the profile's release, the default command line at a cold boot (with ima_hash and
// ima_flush_htable) and, after a kexec, the command line given to kexec_file_load.
func TestProc(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile61IMAKexec, Hash: "sha384", FlushHTable: true})
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(env.Proc, name))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 || b[len(b)-1] != '\n' {
			t.Fatalf("%s: %q does not end in a newline", name, b)
		}
		return string(b[:len(b)-1])
	}
	id1 := read("sys/kernel/random/boot_id")
	if id1 != env.Kernel.BootID() || len(id1) != 36 || id1[14] != '4' {
		t.Fatalf("boot id %q (kernel says %q)", id1, env.Kernel.BootID())
	}
	if r := read("sys/kernel/osrelease"); r != kmodel.Profile61IMAKexec.Features().Release {
		t.Errorf("osrelease %q", r)
	}
	if c := read("cmdline"); c != "console=ttyS0 ima_template=ima-ng ima_hash=sha384 ima_flush_htable" {
		t.Errorf("cold-boot cmdline %q", c)
	}
	if v := read("sys/kernel/kexec_load_disabled"); v != "0" {
		t.Errorf("kexec_load_disabled %q", v)
	}
	const next = "console=ttyS0 ima_hash=sha384 imakexec.initrd=sha256:00"
	if err := env.Kernel.SetNextProfile(kmodel.Profile72); err != nil {
		t.Fatal(err)
	}
	if err := env.Kernel.KexecLoad([]byte("k"), []byte("i"), next); err != nil {
		t.Fatal(err)
	}
	if read("sys/kernel/random/boot_id") != id1 {
		t.Error("boot id changed at kexec load")
	}
	if err := env.Kernel.KexecExecute(); err != nil {
		t.Fatal(err)
	}
	id2 := read("sys/kernel/random/boot_id")
	if id2 == id1 || id2 != env.Kernel.BootID() {
		t.Errorf("boot id after kexec %q (before %q)", id2, id1)
	}
	if c := read("cmdline"); c != next {
		t.Errorf("cmdline after kexec %q, want the kexec_file_load command line", c)
	}
	if r := read("sys/kernel/osrelease"); r != kmodel.Profile72.Features().Release {
		t.Errorf("osrelease after kexec into 7.2: %q", r)
	}
	if err := env.Kernel.ColdBoot(); err != nil {
		t.Fatal(err)
	}
	if id3 := read("sys/kernel/random/boot_id"); id3 == id2 || id3 == id1 {
		t.Errorf("boot id after cold boot %q", id3)
	}
	if c := read("cmdline"); c != "console=ttyS0 ima_template=ima-ng ima_hash=sha384 ima_flush_htable" {
		t.Errorf("cmdline after cold boot %q", c)
	}
}
