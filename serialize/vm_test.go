package serialize_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/serialize"
)

// capture is one list captured from a real kernel in QEMU with swtpm (testdata/vm/README.md).
type capture struct {
	name   string // e.g. "ima-sig" or "kexec-debian/after"
	dir    string
	list   []byte
	ascii  []byte
	count  int
	viol   int
	pcrs   serialize.PCRValues // read in the guest from /sys/class/tpm/tpm0/pcr-<bank>/N
	before *capture            // for the after/ half of a kexec round trip
}

func loadCaptures(t *testing.T) []*capture {
	t.Helper()
	paths, err := filepath.Glob("testdata/vm/*/binary_runtime_measurements")
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob("testdata/vm/*/*/binary_runtime_measurements")
	paths = append(paths, more...)
	if len(paths) < 8 {
		t.Fatalf("found %d captured lists under testdata/vm, want the 8 variants and round trips of its README", len(paths))
	}
	byDir := map[string]*capture{}
	var out []*capture
	for _, p := range paths {
		dir := filepath.Dir(p)
		c := &capture{dir: dir, name: strings.TrimPrefix(filepath.ToSlash(dir), "testdata/vm/"), pcrs: serialize.PCRValues{}}
		c.list = mustRead(t, p)
		c.ascii = mustRead(t, filepath.Join(dir, "ascii_runtime_measurements"))
		c.count = mustAtoi(t, filepath.Join(dir, "count"))
		c.viol = mustAtoi(t, filepath.Join(dir, "violations"))
		for _, b := range []serialize.Bank{serialize.SHA1, serialize.SHA256} {
			f, err := os.Open(filepath.Join(dir, "pcrs-"+b.Name+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			err = serialize.ParsePCRFile(f, b, c.pcrs)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		}
		byDir[dir] = c
		out = append(out, c)
	}
	for _, c := range out {
		if filepath.Base(c.dir) == "after" {
			c.before = byDir[filepath.Join(filepath.Dir(c.dir), "before")]
			if c.before == nil {
				t.Fatalf("%s has no before/", c.name)
			}
		}
	}
	return out
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustAtoi(t *testing.T, p string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.TrimSpace(string(mustRead(t, p))))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return n
}

func pcr10(v serialize.PCRValues) serialize.PCRValues {
	return serialize.PCRValues{10: v[10]}
}

func replayBytes(lists ...[]byte) (*serialize.Result, error) {
	r, err := serialize.NewReplayer(serialize.ReplayOptions{DigestBank: &serialize.SHA1})
	if err != nil {
		return nil, err
	}
	for _, l := range lists {
		if err := r.AddAll(serialize.NewBinaryReader(bytes.NewReader(l), le, 20)); err != nil {
			return nil, err
		}
	}
	return r.Result(), nil
}

// TestCapturedListsReplayToTPM: every captured list replays to the PCR 10 values the TPM
// reported, in both banks, exactly as the kernel's behaviour predicts for each variant.
func TestCapturedListsReplayToTPM(t *testing.T) {
	for _, c := range loadCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			res, err := replayBytes(c.list)
			if err != nil {
				t.Fatal(err)
			}
			// Before 7.2 the count includes restored records, so it equals the list length.
			if res.Records != c.count {
				t.Errorf("%d records, runtime_measurements_count says %d", res.Records, c.count)
			}
			carried := strings.HasPrefix(c.name, "kexec-ima-kexec/after")
			switch {
			case carried && res.Violations <= c.viol:
				// The violations counter is not restored at kexec (ima_restore_measurement_list adds records, not violations); the carried
				// list holds the old kernel's violations too.
				t.Errorf("carried list has %d violations, counter %d: expected more in the list", res.Violations, c.viol)
			case !carried && res.Violations != c.viol:
				t.Errorf("%d violations in the list, counter says %d", res.Violations, c.viol)
			}
			_, alone := res.Verify(pcr10(c.pcrs))
			switch {
			case c.name == "kexec-debian/after":
				// No CONFIG_IMA_KEXEC: the new list alone misses the old kernel's extends.
				if alone == nil {
					t.Fatal("after list alone replays to PCR 10, but the old kernel's records are not in it")
				}
				joined, err := replayBytes(c.before.list, c.list)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := joined.Verify(pcr10(c.pcrs)); err != nil {
					t.Fatalf("before+after: %v", err)
				}
			case c.name == "kexec-ima-kexec/after":
				if alone != nil {
					t.Fatalf("carried list alone: %v", alone)
				}
				joined, err := replayBytes(c.before.list, c.list)
				if err != nil {
					t.Fatal(err)
				}
				var re *serialize.ReplayError
				if _, err := joined.Verify(pcr10(c.pcrs)); !errors.As(err, &re) {
					t.Fatalf("before+after counts the carried records twice and must not verify: %v", err)
				}
				// The kernel carried the old list byte for byte, then a second boot_aggregate.
				if !bytes.HasPrefix(c.list, c.before.list) {
					t.Fatal("after list does not start with the before list")
				}
			default:
				if alone != nil {
					t.Fatal(alone)
				}
			}
		})
	}
}

// TestCapturedListsRoundTrip: the writers reproduce the kernel's files byte for byte.
func TestCapturedListsRoundTrip(t *testing.T) {
	for _, c := range loadCaptures(t) {
		t.Run(c.name, func(t *testing.T) {
			recs := readAll(t, serialize.NewBinaryReader(bytes.NewReader(c.list), le, 20))
			var bin, asc bytes.Buffer
			bw := serialize.NewBinaryWriter(&bin, le, serialize.SHA1, nil)
			aw := serialize.NewASCIIWriter(&asc, le, serialize.SHA1, nil)
			for i := range recs {
				if _, err := serialize.ParseFields(&recs[i], le); err != nil {
					t.Fatalf("record %d fields: %v", i, err)
				}
				if err := bw.Write(&recs[i]); err != nil {
					t.Fatal(err)
				}
				if err := aw.Write(&recs[i]); err != nil {
					t.Fatal(err)
				}
			}
			bw.Flush()
			aw.Flush()
			if !bytes.Equal(bin.Bytes(), c.list) {
				t.Error("binary -> binary differs")
			}
			if !bytes.Equal(asc.Bytes(), c.ascii) {
				t.Errorf("binary -> ascii differs from the kernel's ascii list:\n%s", firstDiff(asc.String(), string(c.ascii)))
			}
			// ASCII back to binary (best effort in general, exact for these lists).
			var back bytes.Buffer
			bw = serialize.NewBinaryWriter(&back, le, serialize.SHA1, nil)
			for _, r := range readAll(t, serialize.NewASCIIReader(bytes.NewReader(c.ascii), le)) {
				if err := bw.Write(&r); err != nil {
					t.Fatal(err)
				}
			}
			bw.Flush()
			if !bytes.Equal(back.Bytes(), c.list) {
				t.Error("ascii -> binary differs")
			}
			// binary -> kexec -> binary.
			f, err := os.CreateTemp(t.TempDir(), "kexec")
			if err != nil {
				t.Fatal(err)
			}
			kw, _ := serialize.NewKexecWriter(f, le, nil)
			for i := range recs {
				kw.Write(&recs[i])
			}
			if err := kw.Close(); err != nil {
				t.Fatal(err)
			}
			f.Seek(0, 0)
			kr, err := serialize.NewKexecReader(f, le)
			if err != nil {
				t.Fatal(err)
			}
			back.Reset()
			bw = serialize.NewBinaryWriter(&back, le, serialize.SHA1, nil)
			for _, r := range readAll(t, kr) {
				bw.Write(&r)
			}
			bw.Flush()
			if !bytes.Equal(back.Bytes(), c.list) {
				t.Error("binary -> kexec -> binary differs")
			}
		})
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return "ours:   " + strconv.Quote(al[i]) + "\nkernel: " + strconv.Quote(bl[i])
		}
	}
	return "lengths differ"
}

// TestCapturedBootAggregates: every boot_aggregate the real kernels logged equals the hash
// of the PCRs 0-7 (sha1) / 0-9 (sha256) the TPM reported.
func TestCapturedBootAggregates(t *testing.T) {
	n := 0
	for _, c := range loadCaptures(t) {
		for i, r := range readAll(t, serialize.NewBinaryReader(bytes.NewReader(c.list), le, 20)) {
			if !serialize.IsBootAggregate(&r, le) {
				continue
			}
			n++
			if err := serialize.CheckBootAggregate(&r, i, c.pcrs, serialize.SchemeHash, le); err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			bad := c.pcrs.Clone()
			bad.Set(0, "sha1", make([]byte, 20))
			bad.Set(0, "sha256", make([]byte, 32))
			var be *serialize.BootAggregateError
			if err := serialize.CheckBootAggregate(&r, i, bad, serialize.SchemeHash, le); !errors.As(err, &be) {
				t.Errorf("%s: a changed PCR 0 still matches: %v", c.name, err)
			}
		}
	}
	if n < 10 {
		t.Fatalf("checked %d boot_aggregate records", n)
	}
}

// TestCapturedKexecCmdlineRebuilt: the kexec-cmdline record a real kernel logged is rebuilt
// byte for byte from the command line alone (the basis of kexec-window reconstruction).
func TestCapturedKexecCmdlineRebuilt(t *testing.T) {
	n := 0
	for _, c := range loadCaptures(t) {
		for _, r := range readAll(t, serialize.NewBinaryReader(bytes.NewReader(c.list), le, 20)) {
			if serialize.EventName(&r, le) != "kexec-cmdline" {
				continue
			}
			fields, err := serialize.ParseFields(&r, le)
			if err != nil {
				t.Fatal(err)
			}
			buf, _ := serialize.FieldValue(fields, "buf")
			dng, _ := serialize.FieldValue(fields, "d-ng")
			algo, digest, err := serialize.ParseDigestField(dng)
			if err != nil {
				t.Fatal(err)
			}
			var want []byte
			switch algo {
			case "sha1":
				d := sha1.Sum(buf)
				want = d[:]
			case "sha256":
				d := sha256.Sum256(buf)
				want = d[:]
			}
			if !bytes.Equal(digest, want) {
				t.Errorf("%s: kexec-cmdline digest %s:%x is not the %s of its buffer", c.name, algo, digest, algo)
			}
			got, err := serialize.BuildRecord(r.Template, serialize.Measured{PCR: r.PCR, Algo: algo, Digest: digest, Name: "kexec-cmdline", Buf: buf, IsBuffer: true}, le)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Data, r.Data) || !bytes.Equal(got.Digest, r.Digest) {
				t.Errorf("%s: rebuilt kexec-cmdline record differs", c.name)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no kexec-cmdline record in the captures")
	}
}
