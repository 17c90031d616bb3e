package initramfs

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/internal/testenv"
)

// Expected values follow ima_get_hash_algo (ima_appraise.c, 7.2).
func TestXattrHashAlgo(t *testing.T) {
	sig := func(typ, version, algo byte) []byte {
		return append([]byte{typ, version, algo, 1, 2, 3, 4, 0, 1}, 0xaa)
	}
	for _, c := range []struct {
		name string
		x    []byte
		want string
	}{
		{"empty", nil, ""},
		{"one byte", []byte{0x04}, ""},
		{"digest-ng sha512", append([]byte{0x04, 6}, make([]byte, 64)...), "sha512"},
		{"digest-ng sha1", append([]byte{0x04, 2}, make([]byte, 20)...), "sha1"},
		{"digest-ng unknown algo", []byte{0x04, 99, 0}, ""},
		{"signature v2 sha384", sig(0x03, 2, 5), "sha384"},
		{"signature v3 sha256", sig(0x03, 3, 4), "sha256"},
		{"signature v1", sig(0x03, 1, 4), ""},
		{"signature header only", []byte{0x03, 2, 4, 0, 0, 0, 0, 0, 0}, ""},
		{"verity v3 sha512", sig(0x06, 3, 6), "sha512"},
		{"verity v2", sig(0x06, 2, 6), ""},
		{"legacy sha1", append([]byte{0x01}, bytes.Repeat([]byte{1}, 20)...), "sha1"},
		{"legacy md5 padded", append(append([]byte{0x01}, bytes.Repeat([]byte{1}, 16)...), 0, 0, 0, 0), "md5"},
		{"legacy md5", append([]byte{0x01}, bytes.Repeat([]byte{1}, 16)...), "md5"},
		{"hmac", []byte{0x02, 1, 2, 3}, ""},
	} {
		if got := XattrHashAlgo(c.x); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// TestKernelHashedInXattrAlgo: a kernel image whose security.ima names sha512 is hashed
// in sha512 too (the kernel measures it so), and the handoff says so.
func TestKernelHashedInXattrAlgo(t *testing.T) {
	e := newEnv(t)
	x := append([]byte{0x04, 6}, make([]byte, 64)...)
	if err := unix.Setxattr(e.opts.Kernel, "security.ima", x, 0); err != nil {
		testenv.Missing(t, "set security.ima on a file in %s (needs root and a file system with security xattrs): %v", filepath.Dir(e.opts.Kernel), err)
	}
	rep, err := e.run(t)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(e.opts.Kernel)
	sum := sha512.Sum512(b)
	if rep.Kernel.IMAAlgo != "sha512" || rep.Kernel.Digests["sha512"] != hex.EncodeToString(sum[:]) || rep.Kernel.Digests["sha256"] == "" {
		t.Fatalf("kernel image %+v", rep.Kernel)
	}
}
