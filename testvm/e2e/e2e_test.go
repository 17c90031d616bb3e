package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/agentconf"
	"github.com/imakexec/imakexec/testvm/e2e"
	"github.com/imakexec/imakexec/testvm/frame"
)

var updateWindow = flag.Bool("update-window", false, "write the kexec-window capture to serialize/testdata/vm/kexec-window/debian-6.1")

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	e2e.Cleanup()
	testvm.CleanupImages()
	os.Exit(code)
}

const store = "/run/imakexec"

// execute runs a scenario for a test: fails on VM errors, guest errors or a missing
// poweroff; logs the QEMU command line and the console when the test fails.
func execute(t *testing.T, sc *e2e.Scenario) *e2e.Run {
	t.Helper()
	dir := t.TempDir()
	var consoleLine func(string)
	if os.Getenv(testvm.EnvConsole) != "" {
		consoleLine = func(l string) { t.Logf("console: %s", l) }
	}
	if sc.Timeout == 0 {
		sc.Timeout = time.Duration(2+sc.Config.Kexecs) * time.Minute
	}
	run, err := e2e.Execute(context.Background(), sc, dir, consoleLine)
	t.Cleanup(func() {
		if t.Failed() && run != nil && run.Result != nil {
			t.Logf("qemu command line:\n%s", run.Result.CommandLine())
			t.Logf("console:\n%s", run.Result.Console)
			t.Logf("marks: %q", run.Result.Stream.Marks())
		}
	})
	if err != nil {
		t.Fatalf("scenario %s: %v", sc.Name, err)
	}
	if gerr := run.Result.Stream.GuestError(); gerr != nil {
		t.Fatal(gerr)
	}
	if !run.Result.Stream.HasMark(frame.MarkPoweroff) {
		t.Fatal("guest did not power off (kernel panic, failed kexec?); see console")
	}
	if got, want := len(run.Gens), sc.Config.Kexecs+1; got != want {
		t.Fatalf("%d generations reported, want %d", got, want)
	}
	t.Logf("scenario %s: %d generations in %v (image %d bytes); imakexec has rejoin=%v verify=%v export=%v",
		sc.Name, len(run.Gens), run.Result.Elapsed.Round(time.Millisecond), run.ImageSize,
		run.Commands["rejoin"], run.Commands["verify"], run.Commands["export"])
	e2e.Timings(run).Log(t.Logf)
	return run
}

// windowOK reports whether a kexec window holds what imakexec kexec lets into it: the
// kexec_file_load records of the memfd initrd and the command line, optionally preceded by
// the store reads after its last drain (the drain's read-back of its segment, the
// manifest), as builds before the lead's fix of 2026-11-29 did.
func windowOK(w []string) bool {
	base := []string{"memfd:imakexec-initrd", "kexec-cmdline"}
	if slices.Equal(w, base) {
		return true
	}
	return len(w) == 4 && strings.HasPrefix(w[0], store+"/segments/") && w[1] == store+"/manifest.jsonl" && slices.Equal(w[2:], base)
}

func scenario(name, kernel string, kexecs int) *e2e.Scenario {
	return &e2e.Scenario{Name: name, Kernel: kernel, Config: agentconf.Config{
		Kexecs: kexecs, HookMode: agentconf.HookUinit, Store: store, Policy: e2e.Policy, Violations: true,
	}}
}

// hostJoin checks the join on the host: a join of store + window + live list replays to
// the final PCRs in both banks (our replay), and evmctl agrees on the whole list.
func hostJoin(t *testing.T, run *e2e.Run) *e2e.Join {
	t.Helper()
	j, err := e2e.HostJoin(run, run.Scenario.Config.Store)
	if err != nil {
		t.Fatalf("host join: %v", err)
	}
	for _, p := range j.Parts {
		t.Logf("join: %s", p)
	}
	var list bytes.Buffer
	tmp := filepath.Join(t.TempDir(), "joined.bin")
	if err := e2e.WriteBinary(tmp, j.Records); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(tmp)
	if err != nil {
		t.Fatal(err)
	}
	list.Write(b)
	last := run.Last()
	if _, err := exec.LookPath("evmctl"); err != nil {
		if testvm.InCI() {
			t.Fatal("evmctl (ima-evm-utils) not in $PATH; CI installs it (scripts/install-deps.sh)")
		}
		t.Log("evmctl (ima-evm-utils) not in $PATH: the evmctl cross-check did not run")
		return j
	}
	out, err := e2e.Evmctl(t.TempDir(), list.Bytes(), len(j.Records), last.Blobs["final/pcrs-sha1.txt"], last.Blobs["final/pcrs-sha256.txt"])
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("evmctl ima_measurement: whole joined list (%d records) matches PCR 10 in sha1 and sha256", len(j.Records))
	return j
}

// checkLeadCommands holds the assertions on rejoin (the hook's verdict), `imakexec verify`
// and `imakexec export` in the guest.
func checkLeadCommands(t *testing.T, run *e2e.Run, j *e2e.Join) {
	t.Helper()
	for _, c := range []string{"rejoin", "verify", "export"} {
		if !run.Commands[c] {
			t.Fatalf("imakexec has no %q command", c)
		}
	}
	last := run.Last()
	if run.Commands["rejoin"] {
		// The hook's verdicts: from the agent (uinit mode) or the console (as /init, one
		// "imakexec: " line per boot, in order).
		pos := 0
		for _, g := range run.Gens {
			hook := string(g.Blobs["hook.txt"])
			if g.HookExit < 0 {
				line, i := run.Result.FirstLine(pos, "imakexec: ")
				if i < 0 {
					t.Errorf("gen %d: no hook verdict line on the console", g.N)
					continue
				}
				hook, pos = line.Text, i+1
			}
			t.Logf("gen %d hook: %s", g.N, strings.TrimSpace(hook))
			if g.N == 1 {
				continue
			}
			if (g.HookExit > 0) || !strings.Contains(hook, "imakexec: VERIFIED") {
				t.Errorf("gen %d: hook exit %d: %s", g.N, g.HookExit, hook)
			}
			if strings.Contains(hook, "no handoff") {
				t.Errorf("gen %d: the hook did not find the handoff that imakexec kexec appended", g.N)
			}
		}
	}
	if run.Commands["verify"] {
		// verify reads the store (measured under the FILE_CHECK rule), so the TPM moves
		// while it runs: its result must equal the host join of the list and PCRs read
		// right before it ("final/") or right after it ("verify/").
		logMeasuredBy(t, run, "final/", "verify/", "imakexec verify")
		v, _, err := run.Verify()
		switch {
		case err != nil:
			t.Error(err)
		case v == nil:
			t.Error("verify exists but the guest sent no verify.json")
		default:
			if !v.Verified {
				t.Errorf("imakexec verify: not verified: %s (%s)", v.Error, last.Blobs["verify.stderr"])
			}
			// Its own reads land before it reads the list and the TPM: its chain must be a
			// prefix of the host join after it, at least as long as the one before it.
			before, err1 := e2e.HostJoinAt(run, run.Scenario.Config.Store, "final/")
			after, err2 := e2e.HostJoinAt(run, run.Scenario.Config.Store, "verify/")
			if err := errors.Join(err1, err2); err != nil {
				t.Fatalf("host join around verify: %v", err)
			}
			n := v.Records
			if n < len(before.Records) || n > len(after.Records) {
				t.Errorf("imakexec verify: %d records; the host join has %d before it and %d after it", n, len(before.Records), len(after.Records))
			} else if res, err := e2e.Replay(after.Records[:n]); err != nil {
				t.Error(err)
			} else {
				for _, bank := range []string{"sha1", "sha256"} {
					if got, want := v.PCRs["10"][bank], fmt.Sprintf("%x", res.PCRs[10][bank]); got != want {
						t.Errorf("imakexec verify: PCR 10 %s = %s; the host join's first %d records replay to %s", bank, got, n, want)
					}
				}
				t.Logf("imakexec verify: verified, %d records (host join: %d before verify, %d after), PCR 10 = the host replay of those %d", n, len(before.Records), len(after.Records), n)
			}
		}
	}
	if run.Commands["export"] {
		logMeasuredBy(t, run, "verify/", "export/", "imakexec export")
		b, ok := last.Blobs["export.binary"]
		if !ok {
			t.Fatalf("export failed: %s", last.Blobs["export.binary.stderr"])
		}
		recs, err := e2e.ReadList(b)
		if err != nil {
			t.Fatalf("exported list: %v", err)
		}
		ej, err := e2e.HostJoinAt(run, run.Scenario.Config.Store, "export/")
		if err != nil {
			t.Fatalf("host join after export: %v", err)
		}
		if len(recs) != len(ej.Records) {
			t.Errorf("export: %d records, host join (after export) %d", len(recs), len(ej.Records))
		}
		for i := range min(len(recs), len(ej.Records)) {
			if !bytes.Equal(recs[i].Data, ej.Records[i].Data) {
				t.Errorf("export record %d (%s) differs from the host join's (%s)", i, e2e.Name(&recs[i]), e2e.Name(&ej.Records[i]))
				break
			}
		}
		if out, err := e2e.Evmctl(t.TempDir(), b, len(recs), last.Blobs["export/pcrs-sha1.txt"], last.Blobs["export/pcrs-sha256.txt"]); err != nil {
			t.Errorf("evmctl on imakexec export: %v\n%s", err, out)
		} else {
			t.Logf("evmctl ima_measurement: imakexec export (%d records) matches PCR 10 in sha1 and sha256", len(recs))
		}
	}
}

// logMeasuredBy logs the records the kernel added between two snapshots of the last
// generation (what a command's own file reads put into the log).
func logMeasuredBy(t *testing.T, run *e2e.Run, before, after, what string) {
	t.Helper()
	a, _ := e2e.ReadList(run.Last().Blobs[before+"binary_runtime_measurements"])
	b, _ := e2e.ReadList(run.Last().Blobs[after+"binary_runtime_measurements"])
	if len(b) > len(a) {
		t.Logf("%s measured %d records of its own: %q", what, len(b)-len(a), e2e.RecordNames(b[len(a):]))
	}
}

// TestVMDebianThreeGenerations: Debian 6.1 cloud kernel (no CONFIG_IMA_KEXEC), workload
// with violations, periodic drain, two real kexecs with imakexec kexec (the hook is /init,
// as `imakexec initramfs` builds it by default), a drain in the last generation too.
func TestVMDebianThreeGenerations(t *testing.T) {
	kernel := testvm.Require(t)
	sc := scenario("debian-3gen", kernel, 2)
	sc.Config.HookMode = agentconf.HookInit
	sc.Config.DrainFinal = true
	run := execute(t, sc)
	j := hostJoin(t, run)
	// Every kexec window: the drain's read-back of its segment, the manifest read after
	// the drain, the memfd initrd, the command line.
	for k, w := range j.Windows {
		if len(w) == 0 && run.Commands["rejoin"] {
			continue // rejoin stored the window records; the host had nothing to add
		}
		if !windowOK(w) {
			t.Errorf("kexec %d: window %q", k+1, w)
		}
	}
	if res, err := e2e.Replay(j.Records); err != nil {
		t.Errorf("replay the joined log: %v", err)
	} else if res.Violations != 6 {
		t.Errorf("joined log has %d violations, want 6 (2 per boot)", res.Violations)
	}
	// Without the store the last list alone does not replay: the join is needed.
	live := mustList(t, run.Last(), "final/binary_runtime_measurements")
	if len(live) == 0 {
		t.Fatal("the last boot's list is empty")
	}
	if mustMatch(t, live, finalPCRs(t, run.Last())) {
		t.Error("the last boot's list alone replays to PCR 10; the Debian kernel should not carry it")
	}
	checkLeadCommands(t, run, j)
}

// TestVMURootInit: the image `imakexec initramfs --init` builds with the REAL u-root init
// (github.com/u-root/u-root/cmds/core/init, built with go build) as /init: u-root's init
// sets up the rootfs and runs imakexec as /bin/uinit; the hook rejoins, prints its verdict
// on the console and execs the agent (--next). One kexec on the Debian kernel; the agent
// builds the next image the same way (--init /init), so both boots go through u-root.
func TestVMURootInit(t *testing.T) {
	kernel := testvm.Require(t)
	sc := scenario("uroot-init", kernel, 1)
	sc.Config.HookMode = agentconf.HookURoot
	run := execute(t, sc)
	// u-root's init really ran, once per boot (its banner goes to the console).
	var banners []int
	for i, l := range run.Result.Lines {
		if strings.Contains(l.Text, "Welcome to u-root!") {
			banners = append(banners, i)
		}
	}
	if len(banners) != len(run.Gens) {
		t.Fatalf("u-root init banner %d times on the console, want %d (one per boot)", len(banners), len(run.Gens))
	}
	// The agent was exec'd by the hook, which u-root's init (pid 1) started as uinit.
	agentMark := regexp.MustCompile(`^agent scenario=\S+ gen=(\d+) pid=(\d+) ppid=(\d+) `)
	seen := 0
	for _, m := range run.Result.Stream.Marks() {
		if f := agentMark.FindStringSubmatch(m); f != nil {
			seen++
			if f[2] == "1" || f[3] != "1" {
				t.Errorf("gen %s: agent pid %s, parent %s; want a child of u-root's init (pid 1)", f[1], f[2], f[3])
			}
		}
	}
	if seen != len(run.Gens) {
		t.Errorf("%d agent start marks, want %d", seen, len(run.Gens))
	}
	// The hook's verdict after the kexec: the first "imakexec: " line after the second
	// boot's banner.
	line, i := run.Result.FirstLine(banners[1], "imakexec: ")
	switch {
	case i < 0:
		t.Error("no hook verdict on the console after the kexec")
	case !strings.Contains(line.Text, "imakexec: VERIFIED") || strings.Contains(line.Text, "no handoff"):
		t.Errorf("hook after the kexec: %s", line.Text)
	default:
		t.Logf("hook (uinit of u-root's init) after the kexec, at %v: %s", line.At.Round(time.Millisecond), strings.TrimSpace(line.Text))
	}
	j := hostJoin(t, run)
	for k, w := range j.Windows {
		if len(w) == 0 && run.Commands["rejoin"] {
			continue // rejoin stored the window records; the host had nothing to add
		}
		if !windowOK(w) {
			t.Errorf("kexec %d: window %q", k+1, w)
		}
	}
	checkLeadCommands(t, run, j)
}

// TestVMKexecWindow: Debian kernel, imakexec kexec --load-only, so the agent can read the
// old kernel's list after kexec_file_load and before reboot(KEXEC): the records of the
// kexec window as the kernel logged them. They must equal, byte for byte, the records
// rebuilt from the carried store and the next kernel's /proc/cmdline.
func TestVMKexecWindow(t *testing.T) {
	kernel := testvm.Require(t)
	sc := scenario("kexec-window", kernel, 1)
	sc.Config.LoadOnly = true
	run := execute(t, sc)
	g1, g2 := run.Gens[0], run.Gens[1]
	at, err := e2e.ReadList(g1.Blobs["at-kexec/binary_runtime_measurements"])
	if err != nil {
		t.Fatal(err)
	}
	carried := g2.StoreFiles("store-start/")
	segs, manLines, err := e2e.ReadStore(carried)
	if err != nil {
		t.Fatal(err)
	}
	// The old boot's stored records (rejoin may already have appended its own segments).
	boot1 := strings.TrimSpace(string(g1.Blobs["boot_id"]))
	n, lastSeg := 0, e2e.Segment{}
	for _, s := range segs {
		if s.BootID == boot1 && s.Source != "reconstructed" {
			n += len(s.Recs)
			lastSeg = s
		}
	}
	if n == 0 || n > len(at) {
		t.Fatalf("the carried store has %d records of boot 1, the list at the jump %d", n, len(at))
	}
	window := at[n:]
	t.Logf("kernel list at the jump: %d records; the carried store has the first %d; window: %q", len(at), n, e2e.RecordNames(window))
	// Candidates: no store file read after the drain; or the drain's read-back of its
	// segment and a read of the manifest (a prefix of the carried one) after it.
	var rebuilt []serialize.Record
	for end := lastSeg.Line; end <= len(manLines); end++ {
		var reads []e2e.StoreRead
		if end > lastSeg.Line {
			var man []byte
			for _, l := range manLines[:end] {
				man = append(append(man, l...), '\n')
			}
			reads = []e2e.StoreRead{
				{Path: store + "/" + lastSeg.File, Data: carried[lastSeg.File]},
				{Path: store + "/manifest.jsonl", Data: man},
			}
		}
		w, err := e2e.WindowRecords(string(g2.Blobs["cmdline"]), sc.Template(), reads)
		if err != nil {
			t.Fatal(err)
		}
		rebuilt = w
		if len(w) == len(window) && slices.EqualFunc(w, window, func(a, b serialize.Record) bool {
			return a.Template == b.Template && bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Digest, b.Digest)
		}) {
			break
		}
	}
	if len(rebuilt) != len(window) {
		t.Fatalf("no candidate matches: window has %d records %q, rebuilt %d %q", len(window), e2e.RecordNames(window), len(rebuilt), e2e.RecordNames(rebuilt))
	}
	for i := range window {
		if window[i].Template != rebuilt[i].Template || !bytes.Equal(window[i].Data, rebuilt[i].Data) || !bytes.Equal(window[i].Digest, rebuilt[i].Digest) {
			t.Errorf("window record %d: kernel %s %s %x, rebuilt %s %s %x", i, window[i].Template, e2e.Name(&window[i]), window[i].Digest,
				rebuilt[i].Template, e2e.Name(&rebuilt[i]), rebuilt[i].Digest)
		}
	}
	// No KEXEC_KERNEL_CHECK record: /boot/vmlinuz was measured once, before the drain.
	if c := slices.Index(e2e.RecordNames(window), "/boot/vmlinuz"); c >= 0 {
		t.Errorf("the kernel image has a window record at %d", c)
	}
	j := hostJoin(t, run)
	if *updateWindow {
		writeWindowCapture(t, run)
	}
	checkLeadCommands(t, run, j)
}

// writeWindowCapture saves the kexec-window capture as test data (go test -run
// TestVMKexecWindow -update-window).
func writeWindowCapture(t *testing.T, run *e2e.Run) {
	root, err := testvm.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "serialize", "testdata", "vm", "kexec-window", "debian-6.1")
	g1, g2 := run.Gens[0], run.Gens[1]
	files := map[string][]byte{}
	for _, name := range []string{"binary_runtime_measurements", "ascii_runtime_measurements", "count", "violations", "pcrs-sha1.txt", "pcrs-sha256.txt"} {
		files["before/"+name] = g1.Blobs["at-kexec/"+name]
		files["after/"+name] = g2.Blobs["final/"+name]
	}
	files["before/pre-kexec-count"] = g1.Blobs["pre-kexec/count"]
	files["before/cmdline.txt"] = g1.Blobs["cmdline"]
	files["after/cmdline.txt"] = g2.Blobs["cmdline"]
	files["before/kernel-release.txt"] = g1.Blobs["kernel-release"]
	files["after/kernel-release.txt"] = g2.Blobs["kernel-release"]
	files["before/ima-policy.txt"] = []byte(e2e.Policy)
	files["after/ima-policy.txt"] = []byte(e2e.Policy)
	files["before/kexec.json"] = g1.Blobs["kexec.json"]
	for name, b := range g2.StoreFiles("store-start/") {
		files["store/"+name] = b
	}
	os.RemoveAll(dir)
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %s", dir)
}

// TestVMIMAKexecKernel: the 6.1 kernel with CONFIG_IMA_KEXEC=y copies its list at
// kexec_file_load: the stored records must be recognised as the head of the carried ones
// (not counted twice), the window records are carried by the kernel, and the live list
// alone replays.
func TestVMIMAKexecKernel(t *testing.T) {
	kernel := testvm.RequireIMAKexecKernel(t)
	sc := scenario("ima-kexec", kernel, 1)
	sc.KernelCarries = true
	run := execute(t, sc)
	j := hostJoin(t, run)
	if w := j.Windows[0]; !windowOK(w) {
		t.Errorf("records the kernel carried past the store: %q", w)
	}
	// Store + live list counts the carried records twice and does not replay.
	segs, _, err := e2e.ReadStore(run.Last().StoreFiles("store/"))
	if err != nil {
		t.Fatalf("final store: %v", err)
	}
	var doubled []serialize.Record
	for _, s := range segs {
		doubled = append(doubled, s.Recs...)
	}
	if len(doubled) == 0 {
		t.Fatal("the final store holds no record")
	}
	doubled = append(doubled, j.Records...)
	if mustMatch(t, doubled, finalPCRs(t, run.Last())) {
		t.Error("store + live list replays too; the carried records should make it double")
	}
	checkLeadCommands(t, run, j)
}

// TestVMTamperedHandoff flips one byte of a carried segment in the unpacked handoff before
// the hook runs: the hook must refuse and name the cause.
func TestVMTamperedHandoff(t *testing.T) {
	kernel := testvm.Require(t)
	sc := scenario("tampered-handoff", kernel, 1)
	sc.Config.Tamper = agentconf.TamperSegment
	run := execute(t, sc)
	g := run.Gens[1]
	hook := strings.TrimSpace(string(g.Blobs["hook.txt"]))
	t.Logf("hook: %s (exit %d)", hook, g.HookExit)
	if g.HookExit == 0 || !strings.Contains(hook, "NOT VERIFIED") {
		t.Errorf("hook accepted a tampered handoff: exit %d: %s", g.HookExit, hook)
	}
	if !strings.Contains(hook, "segments/00000001.kexec") {
		t.Errorf("hook does not name the tampered file segments/00000001.kexec: %s", hook)
	}
	if strings.Contains(hook, "rejoin not available") {
		t.Errorf("hook got as far as rejoin with a tampered handoff: %s", hook)
	}
}

// TestVMColdBoot boots twice on the same TPM (a power cycle: resetCount goes up), with the
// first boot's store on the second boot's "disk": the drain must archive it and start a
// new chain, which replays on its own.
func TestVMColdBoot(t *testing.T) {
	kernel := testvm.Require(t)
	tpmState := t.TempDir()
	const disk = "/var/lib/imakexec"
	sc := scenario("cold-boot-1", kernel, 0)
	sc.Config.Store, sc.Config.DrainFinal, sc.TPMStateDir = disk, true, tpmState
	run1 := execute(t, sc)
	old := run1.Last().StoreFiles("store/")
	oldDir := t.TempDir()
	for name, b := range old {
		p := filepath.Join(oldDir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		sc.Files = append(sc.Files, p+":"+strings.TrimPrefix(disk, "/")+"/"+name)
	}
	sc2 := *sc
	sc2.Name = "cold-boot-2"
	run2 := execute(t, &sc2)
	g := run2.Last()
	after := g.StoreFiles("store/")
	t.Logf("second boot: hook %s", strings.TrimSpace(string(g.Blobs["hook.txt"])))
	var archived []string
	for name := range after {
		if strings.HasPrefix(name, "archive/") {
			archived = append(archived, name)
		}
	}
	slices.Sort(archived)
	t.Logf("archived: %q", archived)
	if !slices.ContainsFunc(archived, func(n string) bool {
		return strings.HasSuffix(n, "/manifest.jsonl") && bytes.Equal(after[n], old["manifest.jsonl"])
	}) {
		t.Errorf("the first boot's chain is not archived unchanged after the cold boot; store: %q", keys(after))
	}
	hdr := func(m []byte) string { l, _, _ := bytes.Cut(m, []byte("\n")); return string(l) }
	if len(after["manifest.jsonl"]) == 0 || len(old["manifest.jsonl"]) == 0 {
		t.Fatalf("a manifest is missing: first boot %d bytes, second boot %d bytes", len(old["manifest.jsonl"]), len(after["manifest.jsonl"]))
	}
	if hdr(after["manifest.jsonl"]) == hdr(old["manifest.jsonl"]) {
		t.Errorf("the chain was not restarted: same header %s", hdr(old["manifest.jsonl"]))
	}
	t.Logf("old header %s", hdr(old["manifest.jsonl"]))
	t.Logf("new header %s", hdr(after["manifest.jsonl"]))
	hostJoin(t, run2)
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
