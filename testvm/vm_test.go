package testvm_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/testvm"
)

func TestMain(m *testing.M) { testvm.Main(m) }

const (
	guestPkg = testvm.ModulePath + "/testvm/guest/imacapture"
	helloPkg = testvm.ModulePath + "/testvm/guest/hello"
)

func guestImage(kernel string) *testvm.Image {
	im := &testvm.Image{
		Init:     guestPkg,
		Programs: map[string]string{"bin/hello": helloPkg},
		Data:     map[string][]byte{"etc/imacapture/data.txt": []byte("smoke test\n")},
	}
	if kernel != "" {
		im.Files = map[string]string{"boot/vmlinuz": kernel}
	}
	return im
}

func TestImageBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Go programs")
	}
	p := testvm.ImageT(t, guestImage(""))
	if p2 := testvm.ImageT(t, guestImage("")); p2 != p {
		t.Errorf("same image built twice: %s, %s", p, p2)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names, err := testvm.ReadInitramfsNames(f)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"dev", "dev/console", "proc", "sys", "tmp", "init", "bin/hello", "etc/imacapture/data.txt"} {
		if !slices.Contains(names, want) {
			t.Errorf("image lacks %q; has %q", want, names)
		}
	}
}

// TestVMSnapshot boots the Debian kernel once and checks that the IMA list
// the guest sends replays to the PCR 10 it sends, in both banks.
func TestVMSnapshot(t *testing.T) {
	kernel := testvm.Require(t)
	initrd := testvm.ImageT(t, guestImage(kernel))
	// kexec_file_load needs an initrd; the image itself is small enough.
	res := testvm.Boot(t, testvm.Machine{
		Kernel: kernel, Initramfs: initrd,
		Append: "ima_template=ima-ng ima_hash=sha256 imacapture.kexec=none",
	})
	list := blob(t, res, "binary_runtime_measurements")
	recs := parseIMANG(t, list)
	if n := strings.TrimSpace(string(blob(t, res, "count"))); n != strconv.Itoa(len(recs)) {
		t.Errorf("count = %s, list has %d records", n, len(recs))
	}
	if v := strings.TrimSpace(string(blob(t, res, "violations"))); v != "2" {
		t.Errorf("violations = %s, want 2 (open_writers + ToMToU)", v)
	}
	if recs[0].name != "boot_aggregate" {
		t.Errorf("first record %q, want boot_aggregate", recs[0].name)
	}
	checkReplay(t, recs, blob(t, res, "pcrs-sha1.txt"), "sha1")
	checkReplay(t, recs, blob(t, res, "pcrs-sha256.txt"), "sha256")
}

// TestVMKexec does a kexec round trip on the Debian kernel (no
// CONFIG_IMA_KEXEC): the new kernel starts a fresh list, and only the old
// list followed by the new one replays to PCR 10.
func TestVMKexec(t *testing.T) {
	kernel := testvm.Require(t)
	second := testvm.ImageT(t, guestImage(""))
	im := guestImage(kernel)
	im.Files["boot/initrd.cpio"] = second
	res := testvm.Boot(t, testvm.Machine{
		Kernel: kernel, Initramfs: testvm.ImageT(t, im),
		Append: "ima_template=ima-ng ima_hash=sha256 imacapture.kexec=jump",
	})
	before := parseIMANG(t, blob(t, res, "before/binary_runtime_measurements"))
	after := parseIMANG(t, blob(t, res, "after/binary_runtime_measurements"))
	if after[0].name != "boot_aggregate" || !bytes.Equal(after[0].data, before[0].data) {
		t.Errorf("after kexec the list starts with %q, want the same boot_aggregate", after[0].name)
	}
	for _, bank := range []string{"sha1", "sha256"} {
		pcrs := blob(t, res, "after/pcrs-"+bank+".txt")
		checkReplay(t, append(before, after...), pcrs, bank)
		if replay(after, bank) == pcr10(t, pcrs) {
			t.Errorf("%s: the after list alone replays to PCR 10; without IMA_KEXEC it should not", bank)
		}
	}
}

func blob(t *testing.T, res *testvm.Result, name string) []byte {
	t.Helper()
	b, ok := res.Stream.Blob(name)
	if !ok {
		t.Fatalf("guest sent no blob %q", name)
	}
	return b
}

// record is the part of an ima-ng style binary record the replay needs. This
// is a deliberately small parser for trusted test output; the real one is in
// package serialize.
type record struct {
	digest [sha1.Size]byte
	name   string // file name, for ima-ng/ima-sig
	data   []byte // template data
}

func parseIMANG(t *testing.T, b []byte) []record {
	t.Helper()
	var out []record
	le := binary.LittleEndian
	for len(b) > 0 {
		if len(b) < 4+sha1.Size+4 {
			t.Fatalf("truncated record")
		}
		var r record
		copy(r.digest[:], b[4:])
		b = b[4+sha1.Size:]
		n := le.Uint32(b)
		tmpl := string(b[4 : 4+n])
		b = b[4+n:]
		n = le.Uint32(b)
		r.data = b[4 : 4+n]
		b = b[4+n:]
		if tmpl == "ima-ng" || tmpl == "ima-sig" {
			d := r.data[4+le.Uint32(r.data):] // skip d-ng
			r.name = strings.TrimRight(string(d[4:4+le.Uint32(d)]), "\x00")
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		t.Fatal("empty list")
	}
	return out
}

// replay extends a zero PCR with every record (all-ones for a violation) and
// returns the hex result.
func replay(recs []record, bank string) string {
	newHash := map[string]func() hash.Hash{"sha1": sha1.New, "sha256": sha256.New}[bank]
	h := newHash()
	pcr := make([]byte, h.Size())
	for _, r := range recs {
		var v []byte
		switch {
		case r.digest == [sha1.Size]byte{}:
			v = bytes.Repeat([]byte{0xff}, len(pcr))
		case bank == "sha1":
			v = r.digest[:]
		default:
			h.Reset()
			h.Write(r.data)
			v = h.Sum(nil)
		}
		h.Reset()
		h.Write(pcr)
		h.Write(v)
		pcr = h.Sum(nil)
	}
	return hex.EncodeToString(pcr)
}

func pcr10(t *testing.T, pcrs []byte) string {
	t.Helper()
	for _, l := range strings.Split(string(pcrs), "\n") {
		if v, ok := strings.CutPrefix(l, "PCR-10: "); ok {
			return v
		}
	}
	t.Fatalf("no PCR-10 in %q", pcrs)
	return ""
}

func checkReplay(t *testing.T, recs []record, pcrs []byte, bank string) {
	t.Helper()
	if got, want := replay(recs, bank), pcr10(t, pcrs); got != want {
		t.Errorf("%s: replay of %d records = %s, PCR 10 = %s", bank, len(recs), got, want)
	}
}
