package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
)

// RoundTrip is the timing of one kexec. The round trip is timed on the host from the
// console lines (the guest clock restarts at the jump); imakexec's phases are timed in the
// guest (the --verbose trace of imakexec kexec gives each phase's milliseconds since the
// process started; the agent times the hook and --load-only commands).
type RoundTrip struct {
	From, To int // generations
	// Total: from the start of `imakexec kexec` to the end of the hook in the next kernel.
	// With --load-only, the agent's snapshot between the load and the jump (test harness,
	// not kexec) is left out.
	Total time.Duration
	// Prep: imakexec kexec up to the kexec_file_load syscall, its start included (exec, Go
	// runtime), and what it does after the syscall before the jump or exit.
	Prep time.Duration
	// Load: the kexec_file_load syscall (kernel work: reading the image and the initrd,
	// signature check, IMA measurement), 0 if unknown.
	Load time.Duration
	// Hook: the boot hook in the next kernel (read the handoff, copy the store, rejoin and
	// prove it against the TPM), -1 if unknown.
	Hook time.Duration
	// Phases of imakexec kexec, guest-timed, in order (see phaseLabels).
	Phases []Phase
}

// Phase is one step of imakexec kexec.
type Phase struct {
	Name string // trace event that starts it
	D    time.Duration
}

// phaseLabels name the phases by the trace event that starts them (initramfs.RunKexec).
var phaseLabels = map[string]string{
	"start":         "process start",
	"inspect":       "inspect (TPM, store, list)",
	"open-kernel":   "kernel open+hash",
	"memfd":         "memfd",
	"open-initrd":   "initrd copy+hash",
	"check-initrd":  "initrd check",
	"read-cmdline":  "cmdline",
	"read-store":    "store read",
	"drain":         "drain",
	"archive":       "handoff archive",
	"write-handoff": "append+seal+read back",
	"load":          "kexec_file_load",
	"loaded":        "after the load",
	"sync":          "sync",
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

var traceEvent = regexp.MustCompile(`imakexec kexec: ([a-z-]+) \+(\d+)ms`)

// tracePhases turns the trace events (name, ms since the process start) into phases,
// from the process start to the load syscall. It also returns the syscall's duration
// (load to loaded), 0 when unknown.
func tracePhases(lines []string) ([]Phase, time.Duration) {
	type ev struct {
		name string
		at   time.Duration
	}
	evs := []ev{{"start", 0}}
	for _, l := range lines {
		for _, m := range traceEvent.FindAllStringSubmatch(l, -1) {
			ms, _ := strconv.Atoi(m[2])
			evs = append(evs, ev{m[1], time.Duration(ms) * time.Millisecond})
		}
	}
	var out []Phase
	var load time.Duration
	for i := 0; i+1 < len(evs); i++ {
		d := evs[i+1].at - evs[i].at
		if evs[i].name == "load" {
			if evs[i+1].name == "loaded" {
				load = d
			}
			break
		}
		out = append(out, Phase{evs[i].name, d})
	}
	if len(evs) == 1 {
		return nil, 0
	}
	return out, load
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
		if b, ib := res.FirstLine(i, fmt.Sprintf("mark: kexec-begin gen=%d ", k)); ib >= 0 {
			start, i = b, ib
		}
		rt := RoundTrip{From: k, To: k + 1, Hook: -1}
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
		var trace []string
		for _, l := range res.Lines[i:j] {
			if strings.Contains(l.Text, "imakexec kexec: ") {
				trace = append(trace, l.Text)
			}
		}
		rt.Phases, rt.Load = tracePhases(trace)
		rt.Total = end.At - start.At
		if lo := r.Gens[k-1].Times["kexec-load-only"]; lo > 0 {
			// --load-only: the whole command is guest-timed (the trace went to the agent);
			// the round trip is the command plus the jump to the end of the hook.
			rt.Prep = lo - rt.Load
			if jm, ij := res.FirstLine(i, fmt.Sprintf("mark: kexec-jump gen=%d", k)); ij >= 0 && ij < j {
				rt.Total = lo + end.At - jm.At
			}
		} else {
			ld, i2 := res.FirstLine(i, "imakexec kexec: load ")
			if i2 >= 0 && i2 < j {
				// From the agent's mark before it starts imakexec: exec and runtime start
				// are imakexec's too.
				rt.Prep = ld.At - start.At
			}
		}
		t.Trips = append(t.Trips, rt)
		pos = j
	}
	return t
}

func pct(d, of time.Duration) float64 { return float64(d) / float64(of) * 100 }

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// Lines returns the timing report, one item per line.
func (t Timing) Lines() []string {
	out := []string{fmt.Sprintf("wall time %v (QEMU start to power off), periodic drains %v, verify %v", ms(t.Wall), ms(t.Drain), ms(t.Verify))}
	for _, rt := range t.Trips {
		out = append(out, fmt.Sprintf("kexec %d->%d: round trip %v (imakexec kexec start -> end of the hook in the next kernel)", rt.From, rt.To, ms(rt.Total)))
		out = append(out, fmt.Sprintf("  imakexec's own share %v = %.1f%% of the round trip without the kexec_file_load syscall; %v = %.1f%% with it",
			ms(rt.Own()), pct(rt.Own(), rt.Total), ms(rt.Own()+rt.Load), pct(rt.Own()+rt.Load, rt.Total)))
		var ph []string
		for _, p := range rt.Phases {
			label := phaseLabels[p.Name]
			if label == "" {
				label = p.Name
			}
			ph = append(ph, fmt.Sprintf("%s %v", label, p.D))
		}
		out = append(out, fmt.Sprintf("  imakexec kexec (own) %v: %s", ms(rt.Prep), strings.Join(ph, ", ")))
		out = append(out, fmt.Sprintf("  kexec_file_load syscall (kernel) %v = %.1f%%", ms(rt.Load), pct(rt.Load, rt.Total)))
		if rt.Hook >= 0 {
			out = append(out, fmt.Sprintf("  hook in the next kernel (own: read handoff, copy store, rejoin proven against the TPM) %v", ms(rt.Hook)))
		} else {
			out = append(out, "  hook in the next kernel: not timed")
		}
		rest := rt.Total - rt.Own() - rt.Load
		out = append(out, fmt.Sprintf("  rest (kernel: sync, jump, boot of the next kernel up to the hook) %v = %.1f%%", ms(rest), pct(rest, rt.Total)))
	}
	return out
}

// Log writes the timing report, one line per item.
func (t Timing) Log(logf func(string, ...any)) {
	for _, l := range t.Lines() {
		logf("timing: %s", l)
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
			fmt.Fprintf(w, "  imakexec verify (in the guest, at the end; its own store reads were measured too): verified=%v, %d records", v.Verified, v.Records)
			for _, b := range []string{"sha1", "sha256"} {
				if d, ok := v.PCRs["10"][b]; ok {
					fmt.Fprintf(w, ", PCR 10 %s %s", b, d)
				}
			}
			if v.Error != "" {
				fmt.Fprintf(w, ", error: %s", v.Error)
			}
			fmt.Fprintln(w)
		}
	} else {
		fmt.Fprintf(w, "  imakexec verify: not in this build; the host replay above is the proof\n")
	}
	for _, l := range t.Lines() {
		fmt.Fprintf(w, "  %s\n", l)
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
