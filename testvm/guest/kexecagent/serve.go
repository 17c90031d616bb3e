//go:build linux

package main

// The serve-agent mode (agentconf.Config.ServeAgent): an attestation agent reading
// `imakexec serve`'s view as Keylime's agent reads the kernel's list: it opens
// ascii_runtime_measurements once and keeps the descriptor for the whole boot, and each
// poll asks for the entries from the number after the last one it has (numbering is
// global since the TPM reset), replays them from the verifier's saved PCR state and
// compares the result with PCR 10 read from sysfs in sha1 and sha256. Drains (delete-n on
// Debian's 7.2) run while the descriptor is held. Before the kexec the agent stops, as an
// agent does at a reboot; the next boot starts serve again after the hook's rejoin and
// the agent reopens the file and continues from its saved entry number.
//
// Blobs: serve-polls.json (every poll and drain of the generation), serve-state.json (the
// saved state at the end of the generation), and in the last generation serve-final/ (the
// view's binary and ASCII lists and PCR 10 read together).

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imakexec/imakexec/serialize"
	"github.com/imakexec/imakexec/testvm/agentconf"
	"github.com/imakexec/imakexec/testvm/guestlib"
)

// ViewDir is where the agent mounts the view.
const ViewDir = "/run/imakexec-view"

// serveStatePath is the saved state in the next generation's image.
var serveStatePath = filepath.Join(filepath.Dir(agentconf.Path), "serve-state.json")

// ServeState is what the agent (the verifier, for Keylime) keeps across polls and reboots.
type ServeState struct {
	Next  int                 `json:"next"`  // number of the next entry to ask for
	PCRs  serialize.PCRValues `json:"pcrs"`  // the replay of entries 0..Next-1
	Lines []string            `json:"lines"` // the entries got so far
}

// ServePoll is one poll (or one drain, Drain set) as the host checks it.
type ServePoll struct {
	Gen     int               `json:"gen"`
	What    string            `json:"what"`
	From    int               `json:"from"`             // entry number asked for
	Entries int               `json:"entries"`          // entries got
	Tries   int               `json:"tries,omitempty"`  // fetches (>1: the TPM moved while reading)
	TPM     map[string]string `json:"tpm,omitempty"`    // PCR 10 per bank after the fetch
	Replay  map[string]string `json:"replay,omitempty"` // saved state + the entries, PCR 10 per bank
	Err     string            `json:"err,omitempty"`    // a read or parse failure
	Prefix  string            `json:"prefix,omitempty"` // reopen: first entry differing from the saved lines
	Drain   *ServeDrain       `json:"drain,omitempty"`  // a drain while the descriptor was held
	// Writer: for "control" and "writer with the view held", the error of opening the
	// kernel's list for writing (what delete-n does) while a reader holds a descriptor.
	Writer  string  `json:"writer,omitempty"`
	Uptime  float64 `json:"uptime,omitempty"`  // guest uptime at the end of the poll
	Counted int     `json:"counted,omitempty"` // runtime_measurements_count of the view after the poll
}

// ServeDrain is one `imakexec drain --json` run while the agent held its descriptor.
type ServeDrain struct {
	Exit   int             `json:"exit"`
	Stderr string          `json:"stderr"`
	Result json.RawMessage `json:"result,omitempty"`
}

type serveAgent struct {
	a       *agent
	serve   *exec.Cmd
	f       *os.File
	offsets []int64 // offsets[i]: byte offset of entry i in f, as far as read
	st      ServeState
	polls   []ServePoll
}

var serveBanks = []serialize.Bank{serialize.SHA1, serialize.SHA256}

func (a *agent) serveAgent() {
	s := &serveAgent{a: a, st: ServeState{PCRs: serialize.PCRValues{}}}
	if a.cfg.Generation > 1 {
		b, err := os.ReadFile(serveStatePath)
		if err != nil {
			a.g.Fatalf("serve agent: saved state: %v", err)
		}
		if err := json.Unmarshal(b, &s.st); err != nil {
			a.g.Fatalf("serve agent: saved state: %v", err)
		}
	}
	if a.cfg.Generation == 1 {
		s.control()
	}
	s.start()
	s.open()
	if a.cfg.Generation == 1 {
		s.writerWhileViewHeld()
	}
	if a.cfg.Generation > 1 {
		s.checkPrefix()
	}
	s.poll("open")
	for round := range 2 {
		a.workload(fmt.Sprintf("serve%d", round))
		if round == 0 && a.cfg.Generation == 1 {
			a.violations()
		}
		s.poll("workload")
		s.drain()
		s.poll("after drain")
		a.workload(fmt.Sprintf("serve%d-post", round))
		s.poll("after drain, new records")
	}
	if a.cfg.Last() {
		s.final()
		s.send()
		s.stop()
		a.final()
		return
	}
	s.send()
	s.stop()
	b, _ := json.Marshal(&s.st)
	if err := os.WriteFile("/tmp/serve-state.json", b, 0o644); err != nil {
		a.g.Fatalf("%v", err)
	}
	a.initrdFiles = append(a.initrdFiles, "/tmp/serve-state.json:"+strings.TrimPrefix(serveStatePath, "/"))
	a.kexec()
}

// start runs `imakexec serve` and waits for its files to appear.
func (s *serveAgent) start() {
	g := s.a.g
	dev := "devtmpfs"
	if _, err := os.Stat("/dev/fuse"); err != nil {
		// devtmpfs makes the node when FUSE is built in; make it if it is not there.
		if err := unix.Mknod("/dev/fuse", unix.S_IFCHR|0o666, int(unix.Mkdev(10, 229))); err != nil {
			g.Fatalf("serve agent: mknod /dev/fuse: %v", err)
		}
		dev = "mknod"
	}
	g.Mark("serve fuse-device gen=%d from=%s", s.a.cfg.Generation, dev)
	cmd := exec.Command(s.a.imk, "-v", "serve", "--mount", ViewDir, "--store", s.a.cfg.Store)
	cmd.Args[0] = "imakexec"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Start(); err != nil {
		g.Fatalf("serve agent: start serve: %v", err)
	}
	s.serve = cmd
	t := time.Now()
	for {
		if _, err := os.Stat(filepath.Join(ViewDir, "ascii_runtime_measurements")); err == nil {
			break
		}
		if time.Since(t) > 30*time.Second {
			g.Fatalf("serve agent: %s not mounted after 30 s", ViewDir)
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.a.timeMark("serve-start", time.Since(t))
	g.Mark("serve started gen=%d pid=%d", s.a.cfg.Generation, cmd.Process.Pid)
}

// stop closes the agent's descriptor and stops serve (SIGTERM unmounts the view).
func (s *serveAgent) stop() {
	s.f.Close()
	s.serve.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.serve.Wait() }()
	select {
	case err := <-done:
		s.a.g.Mark("serve stopped gen=%d: %v", s.a.cfg.Generation, err)
	case <-time.After(20 * time.Second):
		s.a.g.Fatalf("serve agent: serve ignored SIGTERM for 20 s")
	}
}

func (s *serveAgent) open() {
	f, err := os.Open(filepath.Join(ViewDir, "ascii_runtime_measurements"))
	if err != nil {
		s.a.g.Fatalf("serve agent: open: %v", err)
	}
	s.f, s.offsets = f, []int64{0}
}

// fetch returns the lines from entry nth on (Keylime's agent: skip nth lines of the file,
// send the rest), reading the held descriptor from the last known entry offset.
func (s *serveAgent) fetch(nth int) ([]string, error) {
	start := min(nth, len(s.offsets)-1)
	if _, err := s.f.Seek(s.offsets[start], io.SeekStart); err != nil {
		return nil, err
	}
	r := bufio.NewReaderSize(s.f, 64<<10)
	off := s.offsets[start]
	var lines []string
	for i := start; ; i++ {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) {
			if line != "" {
				return nil, fmt.Errorf("torn line at offset %d: %q", off, line)
			}
			break
		}
		if err != nil {
			return nil, err
		}
		off += int64(len(line))
		if i+1 == len(s.offsets) {
			s.offsets = append(s.offsets, off)
		}
		if i >= nth {
			lines = append(lines, line)
		}
	}
	if nth >= len(s.offsets) {
		return nil, fmt.Errorf("asked for entry %d, the list has %d", nth, len(s.offsets)-1)
	}
	return lines, nil
}

// pcr10 reads PCR 10 of every bank from sysfs.
func pcr10() (map[string]string, error) {
	m := map[string]string{}
	for _, b := range serveBanks {
		v, err := os.ReadFile(filepath.Join(guestlib.TPMDir, "pcr-"+b.Name, "10"))
		if err != nil {
			return nil, err
		}
		m[b.Name] = strings.ToLower(strings.TrimSpace(string(v)))
	}
	return m, nil
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// poll is one attestation. Something measured while the agent reads (serve's or the
// drain's first read of a store file is a FILE_CHECK record) moves the TPM past what was
// read; the poll then fetches again, as a verifier asks again after a failed quote, and a
// poll whose PCR 10 did not move during the fetch must match.
func (s *serveAgent) poll(what string) {
	g := s.a.g
	p := ServePoll{Gen: s.a.cfg.Generation, What: what, From: s.st.Next}
	var lines []string
	var rp *serialize.Replayer
	for p.Tries = 1; ; p.Tries++ {
		before, err := pcr10()
		if err != nil {
			g.Fatalf("serve agent: %v", err)
		}
		lines, err = s.fetch(s.st.Next)
		if err != nil {
			p.Err = err.Error()
			break
		}
		after, err := pcr10()
		if err != nil {
			g.Fatalf("serve agent: %v", err)
		}
		rp, err = serialize.NewReplayer(serialize.ReplayOptions{Banks: serveBanks, Start: s.st.PCRs})
		if err != nil {
			g.Fatalf("serve agent: %v", err)
		}
		ar := serialize.NewASCIIReader(strings.NewReader(strings.Join(lines, "")), binary.LittleEndian)
		if err := rp.AddAll(ar); err != nil {
			p.Err = fmt.Sprintf("replay entries %d..: %v", s.st.Next, err)
			break
		}
		p.TPM, p.Replay = after, map[string]string{}
		for _, b := range serveBanks {
			p.Replay[b.Name] = hex.EncodeToString(rp.Value(10, b.Name))
		}
		if sameMap(p.TPM, p.Replay) || sameMap(before, after) || p.Tries == 10 {
			break
		}
	}
	p.Entries = len(lines)
	if p.Err == "" {
		s.st.PCRs = rp.State()
		s.st.Next += len(lines)
		s.st.Lines = append(s.st.Lines, lines...)
	}
	if b, err := os.ReadFile(filepath.Join(ViewDir, "runtime_measurements_count")); err == nil {
		fmt.Sscan(string(b), &p.Counted)
	}
	p.Uptime = guestlib.Uptime()
	s.polls = append(s.polls, p)
	g.Mark("serve poll gen=%d %q from=%d entries=%d tries=%d match=%v err=%q", p.Gen, what, p.From, p.Entries, p.Tries, p.Err == "" && sameMap(p.TPM, p.Replay), p.Err)
}

// checkPrefix compares the first Next entries of the reopened view with the saved lines.
func (s *serveAgent) checkPrefix() {
	p := ServePoll{Gen: s.a.cfg.Generation, What: "reopen", From: 0}
	lines, err := s.fetch(0)
	switch {
	case err != nil:
		p.Err = err.Error()
	case len(lines) < len(s.st.Lines):
		p.Err = fmt.Sprintf("the reopened view has %d entries, the agent had %d", len(lines), len(s.st.Lines))
	default:
		for i, l := range s.st.Lines {
			if lines[i] != l {
				p.Prefix = fmt.Sprintf("entry %d: was %q, now %q", i, l, lines[i])
				break
			}
		}
	}
	p.Entries = len(lines)
	s.polls = append(s.polls, p)
	s.a.g.Mark("serve reopen gen=%d entries=%d saved=%d prefix=%q err=%q", p.Gen, len(lines), len(s.st.Lines), p.Prefix, p.Err)
}

// drain runs `imakexec drain` while the descriptor is held.
func (s *serveAgent) drain() {
	out, errb, code, d := s.a.imakexec("drain", "--store", s.a.cfg.Store, "--json")
	s.a.timeMark("drain", d)
	dr := &ServeDrain{Exit: code, Stderr: string(errb)}
	if json.Valid(out) {
		dr.Result = bytes.TrimSpace(out)
	}
	s.polls = append(s.polls, ServePoll{Gen: s.a.cfg.Generation, What: "drain", From: s.st.Next, Drain: dr})
}

// final reads the whole view (binary and ASCII) and PCR 10 with nothing measured in
// between, on descriptors opened first (the opens are measured).
func (s *serveAgent) final() {
	g := s.a.g
	var fs []*os.File
	for _, name := range []string{"binary_runtime_measurements", "ascii_runtime_measurements"} {
		f, err := os.Open(filepath.Join(ViewDir, name))
		if err != nil {
			g.Fatalf("serve agent: %v", err)
		}
		defer f.Close()
		fs = append(fs, f)
	}
	for try := 0; try < 10; try++ {
		before, err := pcr10()
		if err != nil {
			g.Fatalf("serve agent: %v", err)
		}
		var data [][]byte
		for _, f := range fs {
			b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<40))
			if err != nil {
				g.Fatalf("serve agent: read view: %v", err)
			}
			data = append(data, b)
		}
		after, err := pcr10()
		if err != nil {
			g.Fatalf("serve agent: %v", err)
		}
		if !sameMap(before, after) {
			continue
		}
		pcrs, _ := json.Marshal(after)
		s.a.blob("serve-final/binary", data[0])
		s.a.blob("serve-final/ascii", data[1])
		s.a.blob("serve-final/pcr10.json", pcrs)
		return
	}
	g.Fatalf("serve agent: PCR 10 moved during every one of 10 reads of the view")
}

func (s *serveAgent) send() {
	b, _ := json.MarshalIndent(s.polls, "", " ")
	s.a.blob("serve-polls.json", b)
	st, _ := json.Marshal(&s.st)
	s.a.blob("serve-state.json", st)
}

// openWriter opens the kernel's binary list for writing, as a delete-n drain does, and
// closes it without writing; it returns the open's error ("" when it opened). Like the
// drain (Kernel.retryBusy) it retries EBUSY, here for 2 s: serve's own reads open the
// kernel's files for a moment (at start it counts the records), and a writer's open that
// meets one of them is refused once.
func openWriter() string {
	t := time.Now()
	for {
		f, err := os.OpenFile(filepath.Join(guestlib.IMADir, "binary_runtime_measurements"), os.O_WRONLY, 0)
		if err == nil {
			f.Close()
			return ""
		}
		if !errors.Is(err, unix.EBUSY) || time.Since(t) > 2*time.Second {
			return err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// control shows what the drain assertions stand on: an agent holding the kernel's own
// ascii_runtime_measurements makes a writer's open fail with EBUSY on 7.2
// (ima_measure_lock: one writer or many readers).
func (s *serveAgent) control() {
	f, err := os.Open(filepath.Join(guestlib.IMADir, "ascii_runtime_measurements"))
	if err != nil {
		s.a.g.Fatalf("serve agent: %v", err)
	}
	w := openWriter()
	f.Close()
	s.polls = append(s.polls, ServePoll{Gen: s.a.cfg.Generation, What: "control", Writer: w})
	s.a.g.Mark("serve control gen=%d writer with the kernel's list held: %q", s.a.cfg.Generation, w)
}

// writerWhileViewHeld is the same open with the agent holding the view's file instead.
func (s *serveAgent) writerWhileViewHeld() {
	w := openWriter()
	if w == "" {
		w = "ok"
	}
	s.polls = append(s.polls, ServePoll{Gen: s.a.cfg.Generation, What: "writer with the view held", Writer: w})
}
