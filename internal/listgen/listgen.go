// Package listgen generates realistic IMA measurement lists for tests and benchmarks:
// a boot_aggregate, then file measurements with path lengths like a real system's, in the
// templates a kernel writes (ima-ng by default), with optional signatures, buffers and
// violations. The same seed gives the same list.
package listgen

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// Options selects what the generated records look like.
type Options struct {
	Seed uint64
	// Template for file records: "ima-ng" (default), "ima-sig", or a format string.
	Template string
	// SigEvery adds a 256-byte signature to every n-th ima-sig record (0: none).
	SigEvery int
	// BufferEvery adds an ima-buf record every n records (0: none).
	BufferEvery int
	// ViolationEvery adds a violation every n records (0: none).
	ViolationEvery int
	// PCR for all records (default 10).
	PCR uint32
}

var dirs = []string{
	"/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/lib/systemd", "/etc", "/usr/share/locale/en_GB/LC_MESSAGES",
	"/usr/lib/python3/dist-packages/apt", "/var/lib/dpkg/info", "/usr/lib/modules/6.1.0-57-cloud-amd64/kernel/drivers/net",
	"/usr/libexec", "/usr/sbin", "/usr/lib/x86_64-linux-gnu/perl5/5.36/auto/POSIX", "/opt/app/node_modules/.bin",
}

var words = []string{"libc", "ssl", "crypto", "systemd", "journal", "network", "python3.11", "core", "util", "dpkg",
	"apt", "x86_64", "config", "resolved", "udev", "perl", "sshd", "bash", "coreutils", "zlib", "gcc"}

// Generator yields records one by one; it keeps no list in memory.
type Generator struct {
	o    Options
	rng  *rand.Rand
	n    int
	rec  serialize.Record
	data []byte
	dg   *serialize.Digester
	dig  [20]byte
}

// New returns a generator.
func New(o Options) *Generator {
	if o.Template == "" {
		o.Template = "ima-ng"
	}
	if o.PCR == 0 {
		o.PCR = 10
	}
	return &Generator{o: o, rng: rand.New(rand.NewPCG(o.Seed, 0x1a7e)), dg: serialize.NewDigester()}
}

// Next returns the next record (valid until the next call), with its SHA1 digest.
func (g *Generator) Next() *serialize.Record {
	defer func() { g.n++ }()
	le := binary.LittleEndian
	g.data = g.data[:0]
	viol := false
	tmpl := g.o.Template
	var digest [32]byte
	name := ""
	switch {
	case g.n == 0:
		tmpl, name = "ima-ng", "boot_aggregate"
		digest = sha256.Sum256([]byte(fmt.Sprint("pcr0-9", g.o.Seed)))
	case g.o.BufferEvery > 0 && g.n%g.o.BufferEvery == 0:
		tmpl, name = "ima-buf", "kexec-cmdline"
		buf := fmt.Sprintf("console=ttyS0 root=/dev/vda1 imakexec.gen=%d", g.n)
		digest = sha256.Sum256([]byte(buf))
		g.data = appendField(g.data, serialize.DigestField("sha256", digest[:]))
		g.data = appendField(g.data, serialize.NameField(name))
		g.data = appendField(g.data, []byte(buf))
		return g.finish(tmpl, false)
	default:
		name = g.path()
		viol = g.o.ViolationEvery > 0 && g.n%g.o.ViolationEvery == 0
		if !viol {
			for i := 0; i < 32; i += 8 {
				le.PutUint64(digest[i:], g.rng.Uint64())
			}
		}
	}
	t, err := serialize.LookupTemplate(tmpl)
	if err != nil {
		panic(err)
	}
	for _, id := range t.Fields {
		switch id {
		case serialize.FieldDNG:
			g.data = appendField(g.data, serialize.DigestField("sha256", digest[:]))
		case serialize.FieldNNG:
			g.data = appendField(g.data, serialize.NameField(name))
		case serialize.FieldSig:
			var sig []byte
			if g.o.SigEvery > 0 && g.n%g.o.SigEvery == 0 && !viol && name != "boot_aggregate" {
				sig = make([]byte, 9+256)
				sig[0], sig[1], sig[2] = 3, 2, 4 // signature v2, sha256
				for i := 9; i < len(sig); i++ {
					sig[i] = byte(g.rng.Uint32())
				}
			}
			g.data = appendField(g.data, sig)
		case serialize.FieldIUID, serialize.FieldIGID:
			g.data = appendField(g.data, le.AppendUint32(nil, 0))
		case serialize.FieldIMode:
			g.data = appendField(g.data, le.AppendUint16(nil, 0o100755))
		default:
			g.data = appendField(g.data, nil)
		}
	}
	return g.finish(tmpl, viol)
}

func (g *Generator) finish(tmpl string, viol bool) *serialize.Record {
	g.rec = serialize.Record{PCR: g.o.PCR, Template: tmpl, Data: g.data}
	if viol {
		g.rec.Digest = make([]byte, 20)
		return &g.rec
	}
	g.rec.Digest = nil
	d, err := g.dg.SHA1Digest(&g.rec)
	if err != nil {
		panic(err)
	}
	g.dig = d
	g.rec.Digest = g.dig[:]
	return &g.rec
}

// path makes a path of realistic length (mostly 20-80 bytes, some long).
func (g *Generator) path() string {
	var b strings.Builder
	b.WriteString(dirs[g.rng.IntN(len(dirs))])
	parts := 1 + g.rng.IntN(3)
	for i := 0; i < parts; i++ {
		b.WriteByte('/')
		b.WriteString(words[g.rng.IntN(len(words))])
		if g.rng.IntN(2) == 0 {
			b.WriteByte('-')
			b.WriteString(words[g.rng.IntN(len(words))])
		}
	}
	fmt.Fprintf(&b, ".so.%d", g.n)
	return b.String()
}

func appendField(b, v []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}
