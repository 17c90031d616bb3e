// Package e2e runs imakexec end to end in QEMU: real kernels, a swtpm TPM, the real
// imakexec binary in the guest (boot hook, drain, initramfs, kexec with kexec_file_load and
// reboot, verify and export once they exist), and checks the joined log on the host on its
// own: the store's segments plus the kexec-window records plus the live list, replayed
// with package serialize against the PCRs the guest read from sysfs, and cross-checked
// with evmctl ima_measurement.
//
// The guest side is testvm/guest/kexecagent, configured by testvm/agentconf. The tests
// are in this package (go test ./testvm/e2e); testvm/cmd/demo prints the readable report
// of the Debian scenario (make demo).
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/internal/kcmdline"
	"github.com/imakexec/imakexec/testvm"
	"github.com/imakexec/imakexec/testvm/agentconf"
	"github.com/imakexec/imakexec/testvm/frame"
	"github.com/imakexec/imakexec/testvm/guestlib"
)

// Policy is the guest's IMA policy, written by the agent after the hook in every
// generation: guestlib.TestPolicy and the kexec command line.
const Policy = guestlib.TestPolicy + guestlib.PolicyKexecCmdline

// KernelAppend is the command line every scenario adds (the kexec reuses it).
const KernelAppend = "ima_template=ima-ng ima_hash=sha256"

// Scenario is one VM run: a cold boot, Config.Kexecs kexec round trips, checks.
type Scenario struct {
	Name   string
	Kernel string
	// KernelCarries: the kernel has CONFIG_IMA_KEXEC (it copies its list at load time).
	KernelCarries bool
	Config        agentconf.Config
	// Files are extra "SRC:DST" files for the first image (e.g. an old store).
	Files []string
	// TPMStateDir: see testvm.Machine.TPMStateDir (cold boot of the same TPM).
	TPMStateDir string
	// Append is added to KernelAppend (e.g. "ima_flush_htable"), replacing a parameter of
	// the same name there (e.g. "ima_template=ima-ngv2"); the kexecs reuse it.
	Append  string
	Timeout time.Duration
}

// CmdlineAppend is the command line the scenario boots with: KernelAppend with Append's
// parameters in place of those of the same name, then the others of Append.
func (sc *Scenario) CmdlineAppend() string {
	line := KernelAppend
	for _, a := range kcmdline.Parse(sc.Append) {
		line = kcmdline.Without(line, a.Key)
	}
	return strings.TrimSpace(line + " " + sc.Append)
}

// Template is the template of the scenario's file records: ima_template= of its command
// line (the one the kernel takes, kcmdline.Value), "ima-ng" (Debian's
// CONFIG_IMA_DEFAULT_TEMPLATE) without one.
func (sc *Scenario) Template() string {
	if t := kcmdline.Value(sc.CmdlineAppend(), "ima_template"); t != "" {
		return t
	}
	return "ima-ng"
}

// Binaries are the guest programs, built once per process.
type Binaries struct {
	IMAKexec string // CGO_ENABLED=0 build of ./cmd/imakexec
	Agent    string // testvm/guest/kexecagent
	// URootInit is u-root's init (URootInitPkg), built on demand by BuildURootInit.
	URootInit string
}

// URootInitPkg is the real u-root init. go.mod names it in a tool directive, so its
// dependencies stay in go.sum and a plain go build resolves it in this module.
const URootInitPkg = "github.com/u-root/u-root/cmds/core/init"

var bins struct {
	sync.Mutex
	dir string
	b   *Binaries
}

// BuildBinaries builds imakexec and the agent for the guest (static, GOAMD64=v1) into a
// temporary directory that Cleanup removes.
func BuildBinaries(ctx context.Context) (*Binaries, error) {
	bins.Lock()
	defer bins.Unlock()
	if bins.b != nil {
		return bins.b, nil
	}
	dir, err := os.MkdirTemp("", "imakexec-e2e")
	if err != nil {
		return nil, err
	}
	b := &Binaries{IMAKexec: filepath.Join(dir, "imakexec"), Agent: filepath.Join(dir, "kexecagent")}
	if err := testvm.GoBuild(ctx, testvm.ModulePath+"/cmd/imakexec", b.IMAKexec); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := testvm.GoBuild(ctx, testvm.ModulePath+"/testvm/guest/kexecagent", b.Agent); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	bins.dir, bins.b = dir, b
	return b, nil
}

// BuildURootInit builds u-root's init for the guest (static, -trimpath, as the other
// guest programs) next to the binaries of BuildBinaries, once per process.
func BuildURootInit(ctx context.Context) (*Binaries, error) {
	b, err := BuildBinaries(ctx)
	if err != nil {
		return nil, err
	}
	bins.Lock()
	defer bins.Unlock()
	if b.URootInit != "" {
		return b, nil
	}
	out := filepath.Join(bins.dir, "uroot-init")
	if err := testvm.GoBuild(ctx, URootInitPkg, out); err != nil {
		return nil, err
	}
	b.URootInit = out
	return b, nil
}

// Cleanup removes the binaries BuildBinaries made.
func Cleanup() {
	bins.Lock()
	defer bins.Unlock()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	bins.dir, bins.b = "", nil
}

// Commands reports which of rejoin, verify and export the imakexec binary has (they are
// being written; the assertions that need them are gated on this).
func Commands(b *Binaries) (map[string]bool, error) {
	out, err := runCapture(b.IMAKexec, "help")
	if err != nil {
		return nil, fmt.Errorf("imakexec help: %w", err)
	}
	m := map[string]bool{}
	for _, c := range []string{"rejoin", "verify", "export"} {
		m[c] = strings.Contains(out, "\n  "+c+" ")
	}
	return m, nil
}

// BuildImage writes the first generation's initramfs with initramfs.BuildInitramfs (what
// `imakexec initramfs` does; the guest builds the later ones with the command itself).
func BuildImage(b *Binaries, sc *Scenario, out string) error {
	cfg := sc.Config
	cfg.Scenario, cfg.Generation = sc.Name, 1
	dir := filepath.Dir(out)
	cfgFile := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgFile, cfg.Marshal(), 0o644); err != nil {
		return err
	}
	if cfg.HookMode == agentconf.HookURoot {
		return buildURootImage(b, sc, cfgFile, out)
	}
	o := initramfs.BuildOptions{
		Self:     b.IMAKexec,
		Files:    append([]string{sc.Kernel + ":boot/vmlinuz", cfgFile + ":" + strings.TrimPrefix(agentconf.Path, "/")}, sc.Files...),
		HookArgs: []string{"--store " + cfg.Store},
	}
	if cfg.HookMode == agentconf.HookUinit {
		o.Init = b.Agent
	} else {
		o.Files = append(o.Files, b.Agent+":bin/agent")
		o.HookArgs = append(o.HookArgs, "--next /bin/agent")
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	if err := initramfs.BuildInitramfs(f, o); err != nil {
		f.Close()
		return fmt.Errorf("build initramfs: %w", err)
	}
	return f.Close()
}

// buildURootImage builds the first image with the imakexec command itself, as a user
// would: `imakexec initramfs --init U-ROOT-INIT`, so u-root's init is /init and runs
// imakexec as /bin/uinit, whose hook execs the agent (--next /bin/agent).
func buildURootImage(b *Binaries, sc *Scenario, cfgFile, out string) error {
	if b.URootInit == "" {
		return fmt.Errorf("build image: u-root init not built (BuildURootInit)")
	}
	args := []string{"initramfs", "-o", out, "--self", b.IMAKexec, "--init", b.URootInit,
		"--store", sc.Config.Store, "--next", "/bin/agent",
		"--file", sc.Kernel + ":boot/vmlinuz", "--file", cfgFile + ":" + strings.TrimPrefix(agentconf.Path, "/"),
		"--file", b.Agent + ":bin/agent"}
	for _, f := range sc.Files {
		args = append(args, "--file", f)
	}
	if _, err := runCapture(b.IMAKexec, args...); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	return nil
}

// Gen is what one generation (one kernel between kexecs) sent.
type Gen struct {
	N     int
	Blobs map[string][]byte // names without the "genN/" prefix
	Marks []string
	// Times are the guest-timed phases (mark "time gen=N phase=P ms=M").
	Times    map[string]time.Duration
	HookExit int // -1 when the hook ran as /init (exit code not seen)
}

// Blob returns a blob of this generation.
func (g *Gen) Blob(name string) ([]byte, bool) { b, ok := g.Blobs[name]; return b, ok }

// Run is a finished scenario.
type Run struct {
	Scenario  *Scenario
	Result    *testvm.Result
	Gens      []*Gen
	Commands  map[string]bool
	Image     string
	ImageSize int64
}

// Last is the last generation that reported.
func (r *Run) Last() *Gen {
	if len(r.Gens) == 0 {
		return nil
	}
	return r.Gens[len(r.Gens)-1]
}

var (
	genBlob  = regexp.MustCompile(`^gen(\d+)/(.+)$`)
	markGen  = regexp.MustCompile(`\bgen=(\d+)\b`)
	markTime = regexp.MustCompile(`^time gen=(\d+) phase=(\S+) ms=(\d+)$`)
	markHook = regexp.MustCompile(`^hook gen=(\d+) exit=(\d+)$`)
)

// Execute builds the image and boots the scenario. dir receives the image, the console
// and data logs and the TPM state. consoleLine may be nil. The returned Run is filled as
// far as the VM got, also with an error.
func Execute(ctx context.Context, sc *Scenario, dir string, consoleLine func(string)) (*Run, error) {
	build := BuildBinaries
	if sc.Config.HookMode == agentconf.HookURoot {
		build = BuildURootInit
	}
	b, err := build(ctx)
	if err != nil {
		return nil, err
	}
	run := &Run{Scenario: sc, Result: &testvm.Result{Stream: &frame.Stream{}}}
	if run.Commands, err = Commands(b); err != nil {
		return run, err
	}
	run.Image = filepath.Join(dir, "initrd.cpio")
	if err := BuildImage(b, sc, run.Image); err != nil {
		return run, err
	}
	if st, err := os.Stat(run.Image); err == nil {
		run.ImageSize = st.Size()
	}
	m := testvm.Machine{
		Kernel: sc.Kernel, Initramfs: run.Image, Append: sc.CmdlineAppend(), Dir: dir,
		TPMStateDir: sc.TPMStateDir, Timeout: sc.Timeout, ConsoleLine: consoleLine,
	}
	res, runErr := m.Run(ctx)
	run.Result = res
	run.Gens = splitGens(res.Stream)
	return run, runErr
}

func splitGens(s *frame.Stream) []*Gen {
	gens := map[int]*Gen{}
	get := func(n int) *Gen {
		if gens[n] == nil {
			gens[n] = &Gen{N: n, Blobs: map[string][]byte{}, Times: map[string]time.Duration{}, HookExit: -1}
		}
		return gens[n]
	}
	for _, f := range s.Frames {
		switch f.Kind {
		case frame.KindBlob:
			if m := genBlob.FindStringSubmatch(f.Name); m != nil {
				n, _ := strconv.Atoi(m[1])
				get(n).Blobs[m[2]] = f.Data
			}
		case frame.KindMark:
			m := markGen.FindStringSubmatch(f.Text)
			if m == nil {
				continue
			}
			n, _ := strconv.Atoi(m[1])
			g := get(n)
			g.Marks = append(g.Marks, f.Text)
			if t := markTime.FindStringSubmatch(f.Text); t != nil {
				ms, _ := strconv.Atoi(t[3])
				g.Times[t[2]] += time.Duration(ms) * time.Millisecond
			}
			if h := markHook.FindStringSubmatch(f.Text); h != nil {
				g.HookExit, _ = strconv.Atoi(h[2])
			}
		}
	}
	var out []*Gen
	for _, g := range gens {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].N < out[j].N })
	return out
}

// StoreFiles returns the blobs of gen under prefix ("store/", "store-start/") keyed by
// their path in the store.
func (g *Gen) StoreFiles(prefix string) map[string][]byte {
	m := map[string][]byte{}
	for name, b := range g.Blobs {
		if rel, ok := strings.CutPrefix(name, prefix); ok {
			m[rel] = b
		}
	}
	return m
}
