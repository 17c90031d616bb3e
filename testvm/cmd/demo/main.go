// Command demo runs the Debian-kernel end-to-end scenario (a cold boot and two kexecs with
// the real imakexec in QEMU with swtpm) and prints a short report: records per boot, what
// was carried and by whom, and PCR 10 per bank against the replay of the joined log. It is
// what `make demo` runs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/agentconf"
	"github.com/imakexec/imakexec/testvm/e2e"
)

func main() {
	kexecs := flag.Int("kexecs", 2, "kexec round trips")
	keep := flag.Bool("keep", false, "keep the run directory (console.log, data.log, TPM state)")
	console := flag.Bool("console", false, "stream the VM console")
	flag.Parse()
	os.Exit(run(*kexecs, *keep, *console))
}

func run(kexecs int, keep, console bool) int {
	defer e2e.Cleanup()
	kernel, err := testvm.FindKernel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "imakexec-demo")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 2
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	sc := &e2e.Scenario{Name: "demo-debian", Kernel: kernel, Timeout: time.Duration(2+kexecs) * time.Minute,
		Config: agentconf.Config{Kexecs: kexecs, HookMode: agentconf.HookUinit, Store: "/run/imakexec", Policy: e2e.Policy, Violations: true}}
	var line func(string)
	if console {
		line = func(l string) { fmt.Println("console:", l) }
	}
	fmt.Printf("booting %s in QEMU (TCG) with swtpm: a cold boot and %d kexec(s), about %d s...\n", kernel, kexecs, 10+15*kexecs)
	r, err := e2e.Execute(context.Background(), sc, dir, line)
	if err == nil {
		err = r.Result.Stream.GuestError()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		if r != nil && r.Result != nil {
			fmt.Fprintf(os.Stderr, "qemu: %s\nconsole:\n%s\n", r.Result.CommandLine(), r.Result.Console)
		}
		return 1
	}
	j, jerr := e2e.HostJoin(r, sc.Config.Store)
	e2e.Report(os.Stdout, r, j, e2e.Timings(r))
	if keep {
		fmt.Println("  run directory:", dir)
	}
	if jerr != nil {
		fmt.Println("RESULT: the host could not prove the joined log:", jerr)
		return 1
	}
	if v, ok, verr := r.Verify(); ok && (verr != nil || !v.Verified) {
		fmt.Println("RESULT: the host proves the joined log, but imakexec verify in the guest did not")
		return 1
	}
	fmt.Println("RESULT: the IMA log across all boots replays to the TPM's PCR 10 in sha1 and sha256")
	return 0
}
