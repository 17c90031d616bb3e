package e2e_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/e2e"
)

// servePoll is the part of the agent's serve-polls.json these checks read
// (testvm/guest/kexecagent/serve.go, ServePoll).
type servePoll struct {
	Gen     int               `json:"gen"`
	What    string            `json:"what"`
	From    int               `json:"from"`
	Entries int               `json:"entries"`
	Tries   int               `json:"tries"`
	TPM     map[string]string `json:"tpm"`
	Replay  map[string]string `json:"replay"`
	Err     string            `json:"err"`
	Prefix  string            `json:"prefix"`
	Counted int               `json:"counted"`
	Writer  string            `json:"writer"`
	Drain   *struct {
		Exit   int             `json:"exit"`
		Stderr string          `json:"stderr"`
		Result json.RawMessage `json:"result"`
	} `json:"drain"`
}

type serveDrainResult struct {
	Backend string `json:"backend"`
	Stored  uint64 `json:"stored"`
	Deleted uint64 `json:"deleted"`
}

// TestVMServeAgentDebian72: Debian's own 7.2 cloud kernel (FUSE built in; delete-n, no
// CONFIG_IMA_KEXEC, so nothing is carried over a kexec). An agent-like reader opens
// `imakexec serve`'s ascii_runtime_measurements once and keeps the descriptor, as
// Keylime's agent does, while drains delete records from the kernel's list; it polls by
// entry number, and every poll's entries, replayed from its saved state, equal PCR 10 as
// the guest reads it from sysfs in sha1 and sha256; the drains succeed (the control: a
// reader holding the kernel's own list makes a writer's open fail with EBUSY for the 2 s
// it retries, while one holding the view lets it in). Then
// imakexec kexec into the same kernel; after the hook's rejoin serve starts again, the
// agent reopens and continues from the entry number it had (numbering is global since the
// TPM reset), the first entries of the new view are the ones it already had, and polls
// keep matching. On the host, a strict replay of the final view's binary list equals the
// guest's PCR 10.
func TestVMServeAgentDebian72(t *testing.T) {
	kernel := testvm.RequireDebian72Kernel(t)
	sc := scenario("debian72-serve-agent", kernel, 1)
	sc.Config.ServeAgent = true
	run := execute(t, sc)

	var polls []servePoll
	for _, g := range run.Gens {
		b, ok := g.Blobs["serve-polls.json"]
		if !ok {
			t.Fatalf("gen %d sent no serve-polls.json", g.N)
		}
		var ps []servePoll
		if err := json.Unmarshal(b, &ps); err != nil {
			t.Fatalf("gen %d serve-polls.json: %v", g.N, err)
		}
		polls = append(polls, ps...)
	}
	next := 0 // the entry number the agent must ask for next
	gen := 1  // the generation of the polls seen so far
	drains := map[int]int{}
	matched := map[int]int{}
	controls := 0
	for i, p := range polls {
		if p.Err != "" {
			t.Errorf("gen %d %s: %s", p.Gen, p.What, p.Err)
			continue
		}
		if p.Gen != gen {
			gen = p.Gen
			if p.What != "reopen" {
				t.Errorf("gen %d: the agent's first step was %q, not a reopen", p.Gen, p.What)
			}
		}
		switch {
		case p.What == "control":
			// The kernel's own list held by a reader: a writer (a delete-n drain) is refused.
			if !strings.Contains(p.Writer, "device or resource busy") {
				t.Errorf("control: opening the kernel's list for writing while a reader holds it: %q, want EBUSY", p.Writer)
			}
			t.Logf("control: a writer's open of the kernel's list while a reader holds it: %s", p.Writer)
			controls++
		case p.What == "writer with the view held":
			if p.Writer != "ok" {
				t.Errorf("opening the kernel's list for writing while the agent holds the view: %s", p.Writer)
			}
			t.Logf("a writer's open of the kernel's list while the agent holds the view: %s", p.Writer)
			controls++
		case p.What == "reopen":
			if p.Prefix != "" {
				t.Errorf("gen %d: the reopened view differs from the entries the agent had: %s", p.Gen, p.Prefix)
			}
			if p.Entries < next {
				t.Errorf("gen %d: the reopened view has %d entries, the agent had %d", p.Gen, p.Entries, next)
			}
			t.Logf("gen %d reopen: %d entries, the first %d equal the ones the agent got before the kexec", p.Gen, p.Entries, next)
		case p.Drain != nil:
			d := p.Drain
			var r serveDrainResult
			if err := json.Unmarshal(d.Result, &r); d.Exit != 0 || err != nil {
				t.Errorf("gen %d drain while the agent held its descriptor: exit %d: %s", p.Gen, d.Exit, d.Stderr)
				continue
			}
			if strings.Contains(d.Stderr, "EBUSY") || strings.Contains(d.Stderr, "busy") {
				t.Errorf("gen %d drain met a busy list: %s", p.Gen, d.Stderr)
			}
			if r.Backend != "delete-n" || r.Deleted == 0 {
				t.Errorf("gen %d drain: %+v; want delete-n deleting records", p.Gen, r)
			}
			drains[p.Gen]++
			t.Logf("gen %d drain with the descriptor held: %+v", p.Gen, r)
		default:
			if p.From != next {
				t.Errorf("gen %d %s (poll %d): asked for entry %d, want %d", p.Gen, p.What, i, p.From, next)
			}
			for _, b := range []string{"sha1", "sha256"} {
				if p.TPM[b] == "" || p.TPM[b] != p.Replay[b] {
					t.Errorf("gen %d %s: entries %d..%d replayed from the saved state give PCR 10 %s %s, the TPM has %s",
						p.Gen, p.What, p.From, p.From+p.Entries-1, b, p.Replay[b], p.TPM[b])
				}
			}
			if p.Counted < p.From+p.Entries {
				t.Errorf("gen %d %s: runtime_measurements_count %d after the agent got entries up to %d", p.Gen, p.What, p.Counted, p.From+p.Entries)
			}
			next = p.From + p.Entries
			matched[p.Gen]++
			t.Logf("gen %d poll %-26q from %4d: %3d entries (%d fetch(es)), PCR 10 matches in sha1 and sha256", p.Gen, p.What, p.From, p.Entries, p.Tries)
		}
	}
	for _, g := range run.Gens {
		if drains[g.N] != 2 || matched[g.N] < 5 {
			t.Errorf("gen %d: %d drains and %d polls; want 2 drains and 5 polls", g.N, drains[g.N], matched[g.N])
		}
	}
	if controls != 2 {
		t.Errorf("%d of the 2 writer checks reported", controls)
	}
	// Numbering went on across the kexec: the new boot's first poll asked for the entry
	// after the last one of the old boot, and got the kexec records, boot_aggregate and more.
	for i := 1; i < len(polls); i++ {
		if polls[i].Gen == 2 && polls[i].What == "open" {
			if polls[i].From == 0 || polls[i].Entries < 3 {
				t.Errorf("first poll after the kexec: from %d, %d entries; want it to continue the old boot's numbering with the window and the new boot's records", polls[i].From, polls[i].Entries)
			}
			break
		}
	}

	// The final view, replayed strictly on the host, equals PCR 10 read with it.
	last := run.Last()
	var pcr map[string]string
	if err := json.Unmarshal(last.Blobs["serve-final/pcr10.json"], &pcr); err != nil {
		t.Fatalf("serve-final/pcr10.json: %v", err)
	}
	recs, err := e2e.ReadList(last.Blobs["serve-final/binary"])
	if err != nil {
		t.Fatalf("the view's binary list: %v", err)
	}
	res, err := e2e.Replay(recs)
	if err != nil {
		t.Fatalf("strict replay of the view's binary list: %v", err)
	}
	for _, b := range []string{"sha1", "sha256"} {
		if got := hex.EncodeToString(res.PCRs[10][b]); got != pcr[b] {
			t.Errorf("the view's binary list (%d records) replays to PCR 10 %s %s, the guest read %s", len(recs), b, got, pcr[b])
		}
	}
	ar := serialize.NewASCIIReader(bytes.NewReader(last.Blobs["serve-final/ascii"]), binary.LittleEndian)
	n := 0
	for ; ; n++ {
		r, err := ar.Next()
		if err != nil {
			break
		}
		if n < len(recs) && !bytes.Equal(r.Digest, recs[n].Digest) {
			t.Errorf("view entry %d: ASCII and binary lists differ", n)
			break
		}
	}
	if n != len(recs) || len(recs) < next {
		t.Errorf("final view: %d ASCII entries, %d binary records; the agent had %d", n, len(recs), next)
	}
	t.Logf("final view: %d records; strict host replay equals the guest's PCR 10 in sha1 and sha256; VM time %v", len(recs), run.Result.Elapsed)
	if live, err := e2e.ReadList(last.Blobs["final/binary_runtime_measurements"]); err == nil && len(live) >= len(recs) {
		t.Errorf("the last boot's kernel list has %d records, the view %d: no deletion or kexec was seen", len(live), len(recs))
	}
}
