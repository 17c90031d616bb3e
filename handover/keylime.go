package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// Whether a log is within what Keylime's verifier parses (keylime/ima/ima.py and ast.py,
// commit 9b1f6e6a): ASCII lines of the ima, ima-ng, ima-sig and ima-buf templates, replayed
// into PCR 10 only, from the SHA1 list (the template hash column in log_hash_alg, sha1
// without a policy). An operator learns it from `imakexec verify --json` before a verifier
// fails on the log.

// KeylimeTemplates are the templates Keylime's verifier parses (ast.Entry._mode_lookup).
var KeylimeTemplates = []string{"ima", "ima-ng", "ima-sig", "ima-buf"}

// KeylimeCompat says whether Keylime's verifier can replay a log, and why not.
type KeylimeCompat struct {
	Compatible bool     `json:"compatible"`
	Reasons    []string `json:"reasons"`
}

// KeylimeChecker collects, record by record, what keeps Keylime from parsing a log.
type KeylimeChecker struct {
	templates map[string]*firstSeen
	pcrs      map[uint32]*firstSeen
	newline   *firstSeen
	space     *firstSeen
}

type firstSeen struct {
	seq uint64
	n   uint64
}

func seen(m *firstSeen, seq uint64) *firstSeen {
	if m == nil {
		return &firstSeen{seq: seq, n: 1}
	}
	m.n++
	return m
}

// NewKeylimeChecker returns an empty checker.
func NewKeylimeChecker() *KeylimeChecker {
	return &KeylimeChecker{templates: map[string]*firstSeen{}, pcrs: map[uint32]*firstSeen{}}
}

// Add looks at the record with chain sequence number seq.
func (c *KeylimeChecker) Add(seq uint64, rec *serialize.Record) {
	known := false
	for _, t := range KeylimeTemplates {
		if rec.Template == t {
			known = true
		}
	}
	if !known {
		c.templates[rec.Template] = seen(c.templates[rec.Template], seq)
	}
	if rec.PCR != 10 {
		c.pcrs[rec.PCR] = seen(c.pcrs[rec.PCR], seq)
	}
	if !known {
		return
	}
	name := serialize.EventName(rec, storeOrder)
	if strings.ContainsAny(name, "\n\r") {
		// The kernel prints names raw: the line breaks in two (ima_show_template_string).
		c.newline = seen(c.newline, seq)
	}
	if (rec.Template == "ima-sig" || rec.Template == "ima-buf") && strings.Contains(name, " ") {
		// ImaSig and ImaBuf split the line at the first two spaces after the template.
		c.space = seen(c.space, seq)
	}
}

// Result is the verdict over the records added.
func (c *KeylimeChecker) Result() KeylimeCompat {
	r := KeylimeCompat{Reasons: []string{}}
	var names []string
	for t := range c.templates {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		s := c.templates[t]
		r.Reasons = append(r.Reasons, fmt.Sprintf("template %s (%d records, the first is record %d): Keylime parses only %s", t, s.n, s.seq, strings.Join(KeylimeTemplates, ", ")))
	}
	var pcrs []uint32
	for p := range c.pcrs {
		pcrs = append(pcrs, p)
	}
	sort.Slice(pcrs, func(i, j int) bool { return pcrs[i] < pcrs[j] })
	for _, p := range pcrs {
		s := c.pcrs[p]
		r.Reasons = append(r.Reasons, fmt.Sprintf("PCR %d (%d records, the first is record %d): Keylime replays PCR 10 only", p, s.n, s.seq))
	}
	if s := c.newline; s != nil {
		r.Reasons = append(r.Reasons, fmt.Sprintf("a name with a line break (%d records, the first is record %d): the ASCII list cannot carry it", s.n, s.seq))
	}
	if s := c.space; s != nil {
		r.Reasons = append(r.Reasons, fmt.Sprintf("an ima-sig or ima-buf name with a space (%d records, the first is record %d): Keylime splits the line there", s.n, s.seq))
	}
	r.Compatible = len(r.Reasons) == 0
	return r
}

// CheckKeylime reads the chain (store and live records) and says whether Keylime's verifier
// can parse it. It is a separate pass from Verify, which it does not change.
func CheckKeylime(ctx context.Context, o ChainOptions) (*KeylimeCompat, error) {
	c, err := OpenChain(ctx, o)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	kc := NewKeylimeChecker()
	for {
		rec, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		kc.Add(c.Seq(), rec)
	}
	r := kc.Result()
	return &r, nil
}
