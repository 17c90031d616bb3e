package host

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/e2e"
)

func TestMain(m *testing.M) { testvm.Main(m) }

// scenario boots a prepared disk once: boot 1 works, lets the drain timer fire, loads
// with imakexec kexec --load-only and runs systemctl kexec; the following boots do what
// the test asks (see guest/imakexec-testvm).
func scenario(t *testing.T, o DiskOptions, test string, extra string) (*Disk, *testvm.Result) {
	t.Helper()
	return scenarioWith(t, o, test, func(*Disk) string { return extra })
}

// scenarioNext is the clean scenario whose live update goes to the newest kernel in /boot.
func scenarioNext(t *testing.T, o DiskOptions) (*Disk, *testvm.Result) {
	t.Helper()
	return scenarioWith(t, o, "clean", func(d *Disk) string { return "imakexec.test.next=" + d.Releases[len(d.Releases)-1] })
}

func scenarioWith(t *testing.T, o DiskOptions, test string, extraFor func(*Disk) string) (*Disk, *testvm.Result) {
	t.Helper()
	testvm.Require(t)
	RequireDisk(t)
	dir := t.TempDir()
	if keep := os.Getenv("IMAKEXEC_HOSTVM_DIR"); keep != "" {
		// Keep the disk and the console for a look afterwards (debugfs -R "ls /var/log" root.img).
		var err error
		if dir, err = os.MkdirTemp(keep, t.Name()+"-"); err != nil {
			t.Fatal(err)
		}
		t.Logf("keeping the run in %s", dir)
	}
	d, err := PrepareDisk(context.Background(), dir, o)
	if err != nil {
		t.Fatalf("prepare disk: %v", err)
	}
	t.Logf("disk prepared in %v (kernels %q, %s)", d.PrepTime.Round(time.Second), d.Releases, o.Variant)
	extra := extraFor(d)
	res := testvm.Boot(t, testvm.Machine{
		Kernel: d.Kernel, Initramfs: d.Initrd, Dir: dir, Timeout: 20 * time.Minute,
		Append:    "root=/dev/vda ro ima_policy=tcb systemd.show_status=1 loglevel=6 imakexec.test=" + test + " " + extra,
		ExtraArgs: []string{"-drive", "file=" + d.Image + ",format=raw,if=virtio"},
	})
	if keep := os.Getenv("IMAKEXEC_HOSTVM_DIR"); keep != "" {
		var b strings.Builder
		for _, l := range res.Lines {
			fmt.Fprintf(&b, "%9.3f %s\n", l.At.Seconds(), l.Text)
		}
		os.WriteFile(filepath.Join(dir, "console-times.log"), []byte(b.String()), 0o644)
	}
	return d, res
}

func needMark(t *testing.T, res *testvm.Result, prefix string) string {
	t.Helper()
	for _, m := range res.Stream.Marks() {
		if strings.HasPrefix(m, prefix) {
			return m
		}
	}
	t.Fatalf("no mark %q in %q", prefix, res.Stream.Marks())
	return ""
}

func blob(t *testing.T, res *testvm.Result, name string) []byte {
	t.Helper()
	b, ok := res.Stream.Blob(name)
	if !ok {
		t.Fatalf("no blob %s", name)
	}
	return b
}

// consoleAt is when the host saw a guest mark on the console.
func consoleAt(t *testing.T, res *testvm.Result, mark string) time.Duration {
	t.Helper()
	l, i := res.FirstLine(0, "IMAKEXEC-TESTVM "+mark)
	if i < 0 {
		t.Fatalf("mark %q not on the console", mark)
	}
	return l.At
}

// checkJoined asserts what every verified live update must show in boot 2: rejoin by
// the unit succeeded, imakexec verify exit 0, no ext4 journal recovery and no unclean
// journal, and on the host a strict replay and evmctl of the export against the PCRs read
// in the guest.
func checkJoined(t *testing.T, res *testvm.Result) {
	t.Helper()
	if m := needMark(t, res, "boot2 rejoin="); m != "boot2 rejoin=active result=success" {
		t.Errorf("rejoin unit in boot 2: %q\n%s", m, blob(t, res, "boot2/rejoin.txt"))
	}
	if m := needMark(t, res, "boot2 handoff="); m != "boot2 handoff=kept" {
		t.Errorf("the initramfs did not keep the handoff across switch_root: %q", m)
	}
	rj := string(blob(t, res, "boot2/rejoin.txt"))
	if !strings.Contains(rj, "generation") {
		t.Errorf("rejoin's verdict is not in the journal:\n%s", rj)
	}
	if m := needMark(t, res, "boot2 verify="); m != "boot2 verify=0" {
		t.Errorf("imakexec verify in boot 2: %q\n%s", m, blob(t, res, "boot2/verify.txt"))
	}
	for _, b := range []string{"boot1", "boot2"} {
		if m := needMark(t, res, b+" unclean-lines="); m != b+" unclean-lines=0" {
			t.Errorf("%s: journal recovery or unclean shutdown:\n%s", b, blob(t, res, b+"/unclean.txt"))
		}
	}
	if !strings.Contains(string(blob(t, res, "boot2/ext4.txt")), "mounted filesystem") {
		t.Errorf("boot 2's kernel log has no ext4 mount line:\n%s", blob(t, res, "boot2/ext4.txt"))
	}
	if m := needMark(t, res, "boot2 export="); m != "boot2 export=0" {
		t.Fatalf("imakexec export in boot 2: %q", m)
	}
	list := blob(t, res, "boot2/export.bin")
	recs, err := e2e.ReadList(list)
	if err != nil {
		t.Fatalf("parse export: %v", err)
	}
	p1, p256 := blob(t, res, "boot2/pcrs-sha1.txt"), blob(t, res, "boot2/pcrs-sha256.txt")
	pcrs, err := e2e.ReadPCRs(p1, p256)
	if err != nil {
		t.Fatalf("parse PCRs: %v", err)
	}
	if ok, err := e2e.Matches(recs, pcrs); err != nil || !ok {
		t.Errorf("host replay of the export (%d records) does not match PCR 10 read in the guest (%v)", len(recs), err)
	} else {
		t.Logf("host replay: export of %d records matches PCR 10 in sha1 and sha256", len(recs))
	}
	// The export holds both boots: boot 1's work and boot 2's.
	var w1, w2 bool
	for i := range recs {
		n := e2e.Name(&recs[i])
		w1 = w1 || strings.HasSuffix(n, "/work-1-1")
		w2 = w2 || strings.HasSuffix(n, "/work-2-1")
	}
	if !w1 || !w2 {
		t.Errorf("export lacks boot 1's (%v) or boot 2's (%v) work records", w1, w2)
	}
	if _, err := exec.LookPath("evmctl"); err != nil {
		if testvm.InCI() {
			t.Fatal("evmctl not in $PATH (scripts/install-deps.sh installs ima-evm-utils)")
		}
		t.Log("evmctl not in $PATH: the evmctl cross-check did not run")
	} else if out, err := e2e.Evmctl(t.TempDir(), list, len(recs), p1, p256); err != nil {
		t.Errorf("evmctl: %v\n%s", err, out)
	} else {
		t.Logf("evmctl ima_measurement: export (%d records) matches PCR 10 in sha1 and sha256", len(recs))
	}
}

// A clean live update under ima_policy=tcb on Debian's 6.1 (no carry at execute). With
// $IMAKEXEC_HOST_BASELINE set (make bench does), the same VM then makes the same jump
// without imakexec, for the round-trip times: a measurement, so not in every test run (it
// adds a boot of about five minutes under TCG).
func TestSystemdHostTCB(t *testing.T) {
	baseline := os.Getenv("IMAKEXEC_HOST_BASELINE") != ""
	extra := ""
	if baseline {
		extra = "imakexec.test.baseline=1"
	}
	_, res := scenario(t, DiskOptions{}, "clean", extra)
	needMark(t, res, "boot1 drain=success")
	checkJoined(t, res)
	if !baseline {
		return
	}
	needMark(t, res, "boot3 up")
	with := consoleAt(t, res, "boot2 up") - consoleAt(t, res, "boot1 kexec-start")
	without := consoleAt(t, res, "boot3 up") - consoleAt(t, res, "boot2 baseline-start")
	t.Logf("with imakexec: load %v, shutdown + jump + boot %v; without: load %v, shutdown + jump + boot %v",
		(consoleAt(t, res, "boot1 systemctl-kexec") - consoleAt(t, res, "boot1 kexec-start")).Round(time.Millisecond),
		(consoleAt(t, res, "boot2 up") - consoleAt(t, res, "boot1 systemctl-kexec")).Round(time.Millisecond),
		(consoleAt(t, res, "boot2 systemctl-kexec") - consoleAt(t, res, "boot2 baseline-start")).Round(time.Millisecond),
		(consoleAt(t, res, "boot3 up") - consoleAt(t, res, "boot2 systemctl-kexec")).Round(time.Millisecond))
	t.Logf("round trip of a clean systemctl kexec (from before the load to the scenario unit of the next boot): with imakexec %v, without %v, imakexec's share %+.1f%%",
		with.Round(time.Millisecond), without.Round(time.Millisecond), (float64(with)/float64(without)-1)*100)
}

// The same under a policy with KEXEC_* rules (loaded by systemd from /etc/ima/ima-policy):
// the load's initrd and command-line records are measured before the last drain.
func TestSystemdHostKexecPolicy(t *testing.T) {
	_, res := scenario(t, DiskOptions{KexecPolicy: true}, "clean", "")
	needMark(t, res, "boot1 drain=success")
	checkJoined(t, res)
	ex, _ := e2e.ReadList(blob(t, res, "boot2/export.bin"))
	var cmdline bool
	for i := range ex {
		cmdline = cmdline || e2e.Name(&ex[i]) == "kexec-cmdline"
	}
	if !cmdline {
		t.Errorf("no kexec-cmdline record in the export: the KEXEC_* policy was not in force")
	}
}

// The disk store is changed between the boots: rejoin refuses and says why in the journal.
func TestSystemdHostTamperedStore(t *testing.T) {
	_, res := scenario(t, DiskOptions{}, "tamper", "")
	if m := needMark(t, res, "boot2 tamper="); m != "boot2 tamper=success" {
		t.Fatalf("the store was not tampered with before rejoin: %q", m)
	}
	if m := needMark(t, res, "boot2 rejoin="); strings.HasPrefix(m, "boot2 rejoin=active") {
		t.Fatalf("rejoin accepted a tampered store: %q", m)
	}
	rj := string(blob(t, res, "boot2/rejoin.txt"))
	if !strings.Contains(rj, "disagrees") && !strings.Contains(rj, "does not verify") {
		t.Errorf("rejoin's journal does not name the tampered store:\n%s", rj)
	}
	if m := needMark(t, res, "boot2 verify="); m == "boot2 verify=0" {
		t.Errorf("verify accepted a tampered store")
	}
}

// The dracut variant: the dracut module keeps the handoff across switch_root.
func TestSystemdHostDracut(t *testing.T) {
	_, res := scenario(t, DiskOptions{Variant: Dracut}, "clean", "")
	checkJoined(t, res)
}

// A live update from bookworm's 6.1 into Debian's 7.2 (trixie-backports or sid), installed
// beside it from the .debs; neither carries its list at execute.
func TestSystemdHostNewerKernel(t *testing.T) {
	d, res := scenarioNext(t, DiskOptions{NewerKernel: true})
	if len(d.Releases) < 2 {
		t.Fatalf("the 7.2 kernel did not install: /boot has %q", d.Releases)
	}
	if m := needMark(t, res, "boot2 up"); !strings.Contains(m, "kernel="+d.Releases[len(d.Releases)-1]) {
		t.Fatalf("boot 2 runs %q, want %s", m, d.Releases[len(d.Releases)-1])
	}
	checkJoined(t, res)
}
