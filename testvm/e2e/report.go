package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
)

// RoundTrip is the timing of one kexec, from the host's console timestamps (the guest
// clock restarts at the jump) and the guest-timed phases.
type RoundTrip struct {
	From, To int // generations
	// Total: from the start of `imakexec kexec` to the end of the hook in the next kernel.
	Total time.Duration
	// Prep: imakexec kexec before the kexec_file_load syscall (inspect, read and hash the
	// kernel, copy the initrd into the memfd, last drain, handoff archive).
	Prep time.Duration
	// Load: the kexec_file_load syscall (kernel work: signature check, IMA, copy).
	Load time.Duration
	// Hook: the boot hook in the next kernel (copy store, rejoin), -1 if unknown.
	Hook time.Duration
}

// Own is imakexec's own share: Prep + Hook (the load syscall is the kernel's).
func (rt RoundTrip) Own() time.Duration { return rt.Prep + max(rt.Hook, 0) }

// Timing is a scenario's timing report.
type Timing struct {
	Wall   time.Duration
	Trips  []RoundTrip
	Drain  time.Duration // periodic drains, all generations
	Verify time.Duration
}

// Timings reads the timings of a run. Round trips need the console lines; a trip whose
// markers are missing is left out.
func Timings(r *Run) Timing {
	t := Timing{Wall: r.Result.Elapsed}
	for _, g := range r.Gens {
		t.Drain += g.Times["drain"]
		t.Verify += g.Times["verify"]
	}
	res := r.Result
	pos := 0
	for k := 1; k < len(r.Gens); k++ {
		start, i := res.FirstLine(pos, fmt.Sprintf("mark: snapshot gen=%d pre-kexec", k))
		if i < 0 {
			break
		}
		rt := RoundTrip{From: k, To: k + 1, Hook: -1}
		ins, i1 := res.FirstLine(i, "imakexec kexec: inspect")
		ld, i2 := res.FirstLine(i, "imakexec kexec: load")
		if lo := r.Gens[k-1].Times["kexec-load-only"]; lo > 0 {
			// --load-only: the trace went to the agent; the whole command is guest-timed,
			// the kexec_file_load syscall included (reported as Prep, Load 0).
			rt.Prep = lo
		} else if i1 >= 0 && i2 >= 0 {
			rt.Prep = ld.At - ins.At
			if sy, i3 := res.FirstLine(i2, "imakexec kexec: sync"); i3 >= 0 {
				rt.Load = sy.At - ld.At
			}
		}
		next := r.Gens[k]
		var end testvm.ConsoleLine
		var j int
		if h := next.Times["hook"]; h > 0 {
			rt.Hook = h
			end, j = res.FirstLine(i, fmt.Sprintf("mark: time gen=%d phase=hook", k+1))
		} else {
			// Hook as /init: from the kernel starting /init to the verdict line.
			ri, ji := res.FirstLine(i+1, "Run /init as init process")
			end, j = res.FirstLine(ji, "imakexec: ")
			if ji >= 0 && j >= 0 {
				rt.Hook = end.At - ri.At
			}
		}
		if j < 0 {
			break
		}
		rt.Total = end.At - start.At
		t.Trips = append(t.Trips, rt)
		pos = j
	}
	return t
}

// Log writes the timing report, one line per item.
func (t Timing) Log(logf func(string, ...any)) {
	logf("timing: wall %v, periodic drains %v, verify %v", t.Wall.Round(time.Millisecond), t.Drain, t.Verify)
	for _, rt := range t.Trips {
		share := float64(rt.Own()) / float64(rt.Total) * 100
		withLoad := float64(rt.Own()+rt.Load) / float64(rt.Total) * 100
		logf("timing: kexec %d->%d round trip %v: imakexec kexec before the syscall %v, kexec_file_load %v, hook %v; imakexec's own share %.1f%% (%.1f%% with the load syscall)",
			rt.From, rt.To, rt.Total.Round(time.Millisecond), rt.Prep.Round(time.Millisecond), rt.Load.Round(time.Millisecond), rt.Hook, share, withLoad)
	}
}

// VerifyJSON is the part of `imakexec verify --json` the checks use.
type VerifyJSON struct {
	Verified bool                         `json:"verified"`
	Records  int                          `json:"records"`
	PCRs     map[string]map[string]string `json:"pcrs"`
	Error    string                       `json:"error"`
}

// Verify returns the final generation's `imakexec verify --json` result, if it ran.
func (r *Run) Verify() (*VerifyJSON, bool, error) {
	b, ok := r.Last().Blobs["verify.json"]
	if !ok {
		return nil, false, nil
	}
	var v VerifyJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, true, fmt.Errorf("verify --json: %w: %s", err, b)
	}
	return &v, true, nil
}

// Report writes the readable report of a run (make demo).
func Report(w io.Writer, r *Run, j *Join, t Timing) {
	sc := r.Scenario
	fmt.Fprintf(w, "scenario %s: %s, %d kexec(s), one swtpm TPM (sha1+sha256), QEMU TCG\n", sc.Name, kernelLabel(r), sc.Config.Kexecs)
	for _, g := range r.Gens {
		n := strings.TrimSpace(string(g.Blobs["pre-kexec/count"]))
		if n == "" {
			n = strings.TrimSpace(string(g.Blobs["final/count"]))
		}
		hook := "hook verdict on the console"
		if b, ok := g.Blobs["hook.txt"]; ok {
			hook = strings.TrimSpace(string(b))
		} else if line, i := r.Result.FirstLine(0, "imakexec: "); i >= 0 && g.N == 1 {
			hook = line.Text
		}
		fmt.Fprintf(w, "  boot %d: %s records in the kernel's list; hook: %s\n", g.N, n, oneLine(hook))
	}
	if j != nil {
		fmt.Fprintf(w, "  joined log (host, independent of imakexec): %d records\n", len(j.Records))
		for _, p := range j.Parts {
			fmt.Fprintf(w, "    %s\n", p)
		}
		if res, err := Replay(j.Records); err == nil {
			last := r.Last()
			pcrs, _ := ReadPCRs(last.Blobs["final/pcrs-sha1.txt"], last.Blobs["final/pcrs-sha256.txt"])
			for _, bank := range []string{"sha1", "sha256"} {
				eq := "=="
				if fmt.Sprintf("%x", res.PCRs[10][bank]) != fmt.Sprintf("%x", pcrs[10][bank]) {
					eq = "!="
				}
				fmt.Fprintf(w, "  PCR 10 %-6s TPM %x %s replay %x\n", bank, pcrs[10][bank], eq, res.PCRs[10][bank])
			}
		}
	}
	if v, ok, err := r.Verify(); ok {
		if err != nil {
			fmt.Fprintf(w, "  imakexec verify: %v\n", err)
		} else {
			fmt.Fprintf(w, "  imakexec verify (in the guest): verified=%v, %d records, PCR 10 %v %s\n", v.Verified, v.Records, v.PCRs["10"], v.Error)
		}
	} else {
		fmt.Fprintf(w, "  imakexec verify: not in this build; the host replay above is the proof\n")
	}
	fmt.Fprintf(w, "  wall time %v\n", t.Wall.Round(time.Millisecond))
	for _, rt := range t.Trips {
		fmt.Fprintf(w, "  kexec %d->%d: %v round trip; imakexec %v before the load syscall, kexec_file_load %v, hook %v\n",
			rt.From, rt.To, rt.Total.Round(time.Millisecond), rt.Prep.Round(time.Millisecond), rt.Load.Round(time.Millisecond), rt.Hook)
	}
}

func kernelLabel(r *Run) string {
	rel := strings.TrimSpace(string(r.Gens[0].Blobs["kernel-release"]))
	if r.Scenario.KernelCarries {
		return rel + " (CONFIG_IMA_KEXEC=y)"
	}
	return rel + " (Debian, no CONFIG_IMA_KEXEC)"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// RecordNames lists the event names of records.
func RecordNames(recs []serialize.Record) []string {
	var out []string
	for i := range recs {
		out = append(out, Name(&recs[i]))
	}
	return out
}
