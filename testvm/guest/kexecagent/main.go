//go:build linux

// Command kexecagent is the guest side of the end-to-end scenarios (package testvm/e2e):
// it runs the REAL imakexec binary through a workload, drains, kexec round trips and the
// boot hook, and sends what the host needs to check the join on its own (the store files,
// the live IMA list, the PCRs read from sysfs, /proc/cmdline, timings) over ttyS1.
//
// It is the image's /init in the role of u-root's init with imakexec as /bin/uinit
// (agentconf.HookUinit), or /bin/agent exec'd by imakexec as /init (agentconf.HookInit) or
// by imakexec as the real u-root init's /bin/uinit (agentconf.HookURoot).
// Its instructions are in agentconf.Path; it writes the next generation's into the
// initramfs it builds with `imakexec initramfs` for `imakexec kexec`.
//
// Blobs are named "gen<N>/<what>"; marks "time gen=N phase=P ms=M" report the guest-timed
// durations of imakexec's own work.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/testvm/agentconf"
	"github.com/imakexec/imakexec/testvm/guestlib"
)

const kernelPath = "/boot/vmlinuz"

var banks = []string{"sha1", "sha256"}

type agent struct {
	g   *guestlib.Guest
	cfg *agentconf.Config
	imk string // the imakexec executable
	me  string // this program
	has map[string]bool
	// initrdFiles are extra --file SRC:DST of the next generation's initramfs.
	initrdFiles []string
}

func main() {
	g := guestlib.Start()
	b, err := os.ReadFile(agentconf.Path)
	if err != nil {
		g.Fatalf("read config: %v", err)
	}
	cfg, err := agentconf.Parse(b)
	if err != nil {
		g.Fatalf("%v", err)
	}
	a := &agent{g: g, cfg: cfg, imk: "/bin/uinit", me: "/init"}
	switch cfg.HookMode {
	case agentconf.HookInit:
		a.imk, a.me = "/init", "/bin/agent"
	case agentconf.HookURoot:
		a.me = "/bin/agent"
	}
	g.Mark("agent scenario=%s gen=%d pid=%d ppid=%d uptime=%.2f", cfg.Scenario, cfg.Generation, os.Getpid(), os.Getppid(), guestlib.Uptime())
	a.run()
}

func (a *agent) pfx(name string) string { return a.cfg.Prefix() + name }

func (a *agent) timeMark(phase string, d time.Duration) {
	a.g.Mark("time gen=%d phase=%s ms=%d", a.cfg.Generation, phase, d.Milliseconds())
}

func (a *agent) blob(name string, data []byte) {
	if err := a.g.Blob(a.pfx(name), data); err != nil {
		a.g.Fatalf("%v", err)
	}
}

// imakexec runs the real binary (argv[0] "imakexec", so it is not taken for the hook)
// and returns stdout, stderr and the exit code.
func (a *agent) imakexec(args ...string) (stdout, stderr []byte, code int, d time.Duration) {
	cmd := exec.Command(a.imk, args...)
	cmd.Args[0] = "imakexec"
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	t := time.Now()
	err := cmd.Run()
	d = time.Since(t)
	code = 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		a.g.Fatalf("run imakexec %s: %v", strings.Join(args, " "), err)
	}
	a.g.Logf("imakexec %s -> exit %d in %v", strings.Join(args, " "), code, d.Round(time.Millisecond))
	return o.Bytes(), e.Bytes(), code, d
}

func (a *agent) must(what string, args ...string) ([]byte, time.Duration) {
	out, errb, code, d := a.imakexec(args...)
	if code != 0 {
		a.g.Fatalf("imakexec %s: exit %d: %s %s", what, code, oneLine(string(errb)), oneLine(string(out)))
	}
	return out, d
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func (a *agent) run() {
	cfg := a.cfg
	// Which commands this imakexec has (rejoin, verify, export land later).
	help, _, _, _ := a.imakexec("help")
	a.has = map[string]bool{}
	for _, c := range []string{"rejoin", "verify", "export"} {
		a.has[c] = bytes.Contains(help, []byte("\n  "+c+" "))
	}
	a.g.Mark("commands rejoin=%v verify=%v export=%v", a.has["rejoin"], a.has["verify"], a.has["export"])

	// 1. The boot hook.
	if cfg.HookMode == agentconf.HookUinit {
		if cfg.Tamper != "" && cfg.Generation > 1 {
			a.tamper()
		}
		cmd := exec.Command("/bin/uinit")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		t := time.Now()
		err := cmd.Run()
		d := time.Since(t)
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			a.g.Fatalf("run hook: %v", err)
		}
		a.g.Logf("hook output: %s", strings.TrimSpace(out.String()))
		a.blob("hook.txt", out.Bytes())
		a.g.Mark("hook gen=%d exit=%d", cfg.Generation, code)
		a.timeMark("hook", d)
	} else {
		a.g.Mark("hook gen=%d ran-as-%s", cfg.Generation, cfg.HookMode)
	}
	// The store's parent exists on a real system (/run, /var/lib); create it here.
	if err := os.MkdirAll(filepath.Dir(cfg.Store), 0o755); err != nil {
		a.g.Fatalf("%v", err)
	}
	a.fixStoreModes()
	for _, f := range []struct{ name, path string }{
		{"cmdline", "/proc/cmdline"}, {"boot_id", "/proc/sys/kernel/random/boot_id"},
		{"kernel-release", "/proc/sys/kernel/osrelease"},
	} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			a.g.Fatalf("%v", err)
		}
		a.blob(f.name, b)
	}
	a.sendStore("store-start/")

	// 2. Policy and workload.
	if err := guestlib.WritePolicy(guestlib.IMADir, cfg.Policy); err != nil {
		a.g.Fatalf("%v", err)
	}
	if cfg.ServeAgent {
		a.serveAgent()
		return
	}
	a.workload("a")
	if cfg.Violations {
		a.violations()
	}

	// 3. A periodic drain, then more records that only the last drain takes.
	if !cfg.Last() || cfg.DrainFinal {
		out, d := a.must("drain", "drain", "--store", cfg.Store, "--json")
		a.blob("drain.json", out)
		a.timeMark("drain", d)
	}
	a.workload("b")

	if cfg.Last() {
		a.final()
		return
	}
	a.kexec()
}

// workload executes a program and reads files: BPRM_CHECK and FILE_CHECK records.
func (a *agent) workload(tag string) {
	if _, _, code, _ := a.imakexec("version"); code != 0 {
		a.g.Fatalf("imakexec version: exit %d", code)
	}
	name := fmt.Sprintf("/tmp/workload-gen%d-%s.txt", a.cfg.Generation, tag)
	if err := os.WriteFile(name, []byte(fmt.Sprintf("scenario %s generation %d part %s\n", a.cfg.Scenario, a.cfg.Generation, tag)), 0o644); err != nil {
		a.g.Fatalf("%v", err)
	}
	for _, p := range []string{name, agentconf.Path} {
		if _, err := os.ReadFile(p); err != nil {
			a.g.Fatalf("%v", err)
		}
	}
}

// violations provokes an open_writers and a ToMToU violation (all-zero records).
func (a *agent) violations() {
	ow := fmt.Sprintf("/tmp/open-writers-gen%d.txt", a.cfg.Generation)
	w, err := os.OpenFile(ow, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		a.g.Fatalf("violation: %v", err)
	}
	w.WriteString("written while read\n")
	if _, err := os.ReadFile(ow); err != nil {
		a.g.Fatalf("violation: %v", err)
	}
	w.Close()
	tm := fmt.Sprintf("/tmp/tomtou-gen%d.txt", a.cfg.Generation)
	if err := os.WriteFile(tm, []byte("time of measure\n"), 0o644); err != nil {
		a.g.Fatalf("violation: %v", err)
	}
	r, err := os.Open(tm)
	if err != nil {
		a.g.Fatalf("violation: %v", err)
	}
	w, err = os.OpenFile(tm, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		a.g.Fatalf("violation: %v", err)
	}
	w.WriteString("time of use\n")
	w.Close()
	r.Close()
	a.g.Mark("violations gen=%d", a.cfg.Generation)
}

// tamper flips one byte in the middle of the first carried segment, in the rootfs copy
// the kernel unpacked from the appended handoff archive, before the hook reads it.
func (a *agent) tamper() {
	segs, _ := filepath.Glob("/imakexec/store/segments/*")
	if len(segs) == 0 {
		a.g.Fatalf("tamper: no carried segment under /imakexec/store/segments")
	}
	b, err := os.ReadFile(segs[0])
	if err != nil || len(b) < 64 {
		a.g.Fatalf("tamper: %s: %v (%d bytes)", segs[0], err, len(b))
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(segs[0], b, 0o600); err != nil {
		a.g.Fatalf("tamper: %v", err)
	}
	a.g.Mark("tampered %s offset=%d", segs[0], len(b)/2)
}

// fixStoreModes gives a store the host put into the image (cold-boot scenario) the
// modes imakexec creates (0700 directories, 0600 files).
func (a *agent) fixStoreModes() {
	filepath.WalkDir(a.cfg.Store, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			os.Chmod(p, 0o700)
		} else if d.Type().IsRegular() {
			os.Chmod(p, 0o600)
		}
		return nil
	})
}

// sendStore sends every regular file of the store (except the lock) as prefix+relpath.
func (a *agent) sendStore(prefix string) {
	n := 0
	err := filepath.WalkDir(a.cfg.Store, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fs.SkipAll
			}
			return err
		}
		if !d.Type().IsRegular() || d.Name() == "lock" {
			return nil
		}
		rel, _ := filepath.Rel(a.cfg.Store, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		a.blob(prefix+filepath.ToSlash(rel), b)
		return nil
	})
	if err != nil {
		a.g.Fatalf("send store: %v", err)
	}
	a.g.Mark("store gen=%d %s files=%d", a.cfg.Generation, strings.TrimSuffix(prefix, "/"), n)
}

func (a *agent) snapshot(prefix string) {
	snap, err := guestlib.SnapshotIMA(guestlib.IMADir, guestlib.TPMDir, banks...)
	if err != nil {
		a.g.Fatalf("%v", err)
	}
	if err := a.g.SendSnapshot(a.pfx(prefix), snap); err != nil {
		a.g.Fatalf("%v", err)
	}
	a.g.Mark("snapshot gen=%d %s count=%s", a.cfg.Generation, strings.TrimSuffix(prefix, "/"), strings.TrimSpace(string(snap.Count)))
}

// kexec builds the next generation's initramfs with `imakexec initramfs` and hands over
// with `imakexec kexec`.
func (a *agent) kexec() {
	cfg := a.cfg
	next := cfg.Next()
	if err := os.WriteFile("/tmp/next-config.json", next.Marshal(), 0o644); err != nil {
		a.g.Fatalf("%v", err)
	}
	args := []string{"initramfs", "-o", "/tmp/next.cpio", "--store", cfg.Store,
		"--file", kernelPath + ":boot/vmlinuz", "--file", "/tmp/next-config.json:" + strings.TrimPrefix(agentconf.Path, "/")}
	switch cfg.HookMode {
	case agentconf.HookUinit:
		args = append(args, "--self", a.imk, "--init", a.me)
	case agentconf.HookURoot:
		// This image's /init is u-root's init: the next image gets it again.
		args = append(args, "--self", a.imk, "--init", "/init", "--file", a.me+":bin/agent", "--next", "/bin/agent")
	default:
		args = append(args, "--self", a.imk, "--file", a.me+":bin/agent", "--next", "/bin/agent")
	}
	for _, f := range a.initrdFiles {
		args = append(args, "--file", f)
	}
	_, d := a.must("initramfs", args...)
	a.timeMark("build-initrd", d)
	// What the kernel holds right before imakexec kexec (no window records yet).
	a.snapshot("pre-kexec/")

	kargs := []string{"-v", "kexec", "--kernel", kernelPath, "--initrd", "/tmp/next.cpio", "--reuse-cmdline", "--store", cfg.Store, "--json"}
	if cfg.DryRun {
		out, errb, code, d := a.imakexec(append(kargs, "--dry-run")...)
		if code != 0 {
			a.g.Fatalf("imakexec kexec --dry-run: exit %d: %s %s", code, oneLine(string(errb)), oneLine(string(out)))
		}
		a.blob("kexec-plan.json", out)
		a.timeMark("kexec-dry-run", d)
	}
	if cfg.LoadOnly {
		kargs = append(kargs, "--load-only")
		out, errb, code, d := a.imakexec(kargs...)
		a.g.Logf("kexec trace: %s", oneLine(string(errb)))
		if code != 0 {
			a.g.Fatalf("imakexec kexec --load-only: exit %d: %s %s", code, oneLine(string(errb)), oneLine(string(out)))
		}
		a.blob("kexec.json", out)
		a.timeMark("kexec-load-only", d)
		for i := 0; i < cfg.AfterLoad; i++ {
			name := fmt.Sprintf("/tmp/after-load-gen%d-%d.txt", cfg.Generation, i)
			if err := os.WriteFile(name, []byte(name+"\n"), 0o644); err != nil {
				a.g.Fatalf("%v", err)
			}
			if _, err := os.ReadFile(name); err != nil {
				a.g.Fatalf("%v", err)
			}
		}
		if cfg.StageAtKexec {
			f, err := os.OpenFile(filepath.Join(guestlib.IMADir, "binary_runtime_measurements_sha1_staged"), os.O_WRONLY, 0)
			if err == nil {
				_, err = f.Write([]byte("A\n"))
				f.Close()
			}
			if err != nil {
				a.g.Fatalf("stage before the jump: %v", err)
			}
			a.g.Mark("staged at kexec gen=%d", cfg.Generation)
		}
		// The window records are in the list now; the old kernel's list as it is at the jump.
		a.snapshot("at-kexec/")
		a.g.Mark("kexec-jump gen=%d", cfg.Generation)
		a.g.Drain()
		unix.Sync()
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC); err != nil {
			a.g.Fatalf("reboot(KEXEC): %v", err)
		}
		select {}
	}
	a.g.Mark("kexec-begin gen=%d uptime=%.2f", cfg.Generation, guestlib.Uptime())
	a.g.Drain()
	cmd := exec.Command(a.imk, kargs...)
	cmd.Args[0] = "imakexec"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout // the trace goes to the console
	err := cmd.Run()
	a.g.Fatalf("imakexec kexec returned without jumping: %v", err)
}

// final runs the checks of the last generation and sends the joined state. The list and
// the PCRs are read first ("final/"), then again after verify ("verify/") and after export
// ("export/"): those commands read the store as root, which a FILE_CHECK rule measures, so
// each is compared with the list and PCRs right after it.
func (a *agent) final() {
	cfg := a.cfg
	a.snapshot("final/")
	if a.has["verify"] {
		out, errb, code, d := a.imakexec("verify", "--store", cfg.Store, "--json")
		a.blob("verify.json", out)
		a.blob("verify.stderr", errb)
		a.g.Mark("verify gen=%d exit=%d", cfg.Generation, code)
		a.timeMark("verify", d)
		a.snapshot("verify/")
	}
	if a.has["export"] {
		out, errb, code, d := a.imakexec("export", "--store", cfg.Store, "--format", "binary")
		a.g.Mark("export gen=%d format=binary exit=%d", cfg.Generation, code)
		if code == 0 {
			a.blob("export.binary", out)
		} else {
			a.blob("export.binary.stderr", append(out, errb...))
		}
		a.timeMark("export", d)
		a.snapshot("export/")
	}
	if out, _, code, _ := a.imakexec("status", "--store", cfg.Store, "--json"); code == 0 {
		a.blob("status.json", out)
	}
	a.sendStore("store/")
	a.g.Mark("done gen=%d", cfg.Generation)
	a.g.Poweroff()
}
