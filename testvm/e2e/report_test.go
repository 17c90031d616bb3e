package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestTracePhases: the --verbose trace of imakexec kexec, one event per console line or
// all on one line (--load-only, logged by the agent), gives the phases up to the load
// syscall and the syscall's duration.
func TestTracePhases(t *testing.T) {
	lines := []string{
		"imakexec kexec: inspect +40ms",
		"imakexec kexec: open-kernel +100ms",
		"guest[  3.10s]: unrelated line",
		"imakexec kexec: open-initrd +700ms",
		"imakexec kexec: drain +1500ms",
		"imakexec kexec: load +1600ms",
		"imakexec kexec: loaded +3100ms",
		"imakexec kexec: sync +3101ms",
	}
	want := "[{start 40ms} {inspect 60ms} {open-kernel 600ms} {open-initrd 800ms} {drain 100ms}] 1.5s"
	ph, load := tracePhases(lines)
	if got := fmt.Sprint(ph, " ", load); got != want {
		t.Errorf("one per line: %s\nwant %s", got, want)
	}
	one := "guest[  2.00s]: kexec trace: " + fmt.Sprint(lines)
	ph, load = tracePhases([]string{one})
	if got := fmt.Sprint(ph, " ", load); got != want {
		t.Errorf("one line: %s\nwant %s", got, want)
	}
	if ph, load := tracePhases(nil); ph != nil || load != 0 {
		t.Errorf("no trace: %v %v", ph, load)
	}
	rt := RoundTrip{Total: 10 * time.Second, Prep: 2 * time.Second, Load: time.Second, Hook: 500 * time.Millisecond}
	if rt.Own() != 2500*time.Millisecond {
		t.Errorf("own %v", rt.Own())
	}
}
