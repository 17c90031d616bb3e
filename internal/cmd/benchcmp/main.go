// Command benchcmp times `imakexec replay` against its peers on the same generated lists
// (make bench): `evmctl ima_measurement` (ima-evm-utils) on the binary list, Keylime's
// verifier replay (third_party/keylime) on the ASCII SHA1 list, and plain `cat` reading the
// binary list. It prints records/s for each, peak RSS, and the ratios.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/imakexec/imakexec/internal/listgen"
	"github.com/imakexec/imakexec/serialize"
)

func main() {
	n := flag.Int("n", 1_000_000, "records in the generated ima-ng list")
	bin := flag.String("imakexec", "bin/imakexec", "imakexec binary")
	dir := flag.String("dir", "out/bench", "work directory for the generated list")
	runs := flag.Int("runs", 3, "runs of each command; the best is reported")
	keylime := flag.String("keylime", "third_party/keylime/keylime-replay", "Keylime's verifier replay (\"\": leave it out)")
	kn := flag.Int("keylime-n", 100_000, "records of the ASCII list Keylime's replay and imakexec read")
	flag.Parse()
	if err := run(*n, *bin, *dir, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
	if *keylime == "" {
		return
	}
	if err := runKeylime(*kn, *bin, *dir, *keylime, *runs); err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
}

func run(n int, bin, dir string, runs int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	list := filepath.Join(dir, fmt.Sprintf("ima-ng-%d.bin", n))
	if _, err := os.Stat(list); err != nil {
		if err := generate(list, n); err != nil {
			return err
		}
	}
	st, _ := os.Stat(list)
	// PCR values for evmctl from our own replay (evmctl wants all 24 lines per bank).
	f, err := os.Open(list)
	if err != nil {
		return err
	}
	res, err := serialize.Replay(serialize.NewBinaryReader(f, binary.LittleEndian, 20), serialize.ReplayOptions{})
	f.Close()
	if err != nil {
		return err
	}
	var pcrArgs []string
	for _, b := range []serialize.Bank{serialize.SHA1, serialize.SHA256} {
		var buf bytes.Buffer
		serialize.WritePCRFile(&buf, b, res.PCRs)
		p := filepath.Join(dir, "pcrs-"+b.Name+".txt")
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			return err
		}
		pcrArgs = append(pcrArgs, "--pcrs", b.Name+","+p)
	}
	fmt.Printf("list: %d ima-ng records, %.1f MiB (%s)\n", n, float64(st.Size())/(1<<20), list)
	ours, oursRSS, err := best(runs, bin, append([]string{"replay", "--banks", "sha1,sha256", list}, "--pcrs", "sha1,"+filepath.Join(dir, "pcrs-sha1.txt"), "--pcrs", "sha256,"+filepath.Join(dir, "pcrs-sha256.txt"))...)
	if err != nil {
		return fmt.Errorf("imakexec: %w", err)
	}
	evm, evmRSS, err := best(runs, "evmctl", append(append([]string{"ima_measurement"}, pcrArgs...), list)...)
	if err != nil {
		return fmt.Errorf("evmctl: %w", err)
	}
	line("imakexec replay --banks sha1,sha256", n, ours, oursRSS)
	line("evmctl ima_measurement", n, evm, evmRSS)
	ratio("imakexec", "evmctl", ours, evm, 1)
	cat, catRSS, err := best(runs, "sh", "-c", `cat "$1" >/dev/null`, "sh", list)
	if err != nil {
		return fmt.Errorf("cat: %w", err)
	}
	line("cat (the binary list, page cache)", n, cat, catRSS)
	ratio("imakexec replay", "cat", ours, cat, 2)
	return nil
}

// runKeylime times imakexec's ASCII replay of the SHA1 bank against Keylime's verifier
// replay (keylime.ima.ima.process_measurement_list, one poll from entry 0) on the same
// ASCII list of n records, the one Keylime's agent sends.
func runKeylime(n int, bin, dir, tool string, runs int) error {
	ascii := filepath.Join(dir, fmt.Sprintf("ima-ng-%d.ascii", n))
	binList := filepath.Join(dir, fmt.Sprintf("ima-ng-%d.bin", n))
	if _, err := os.Stat(binList); err != nil {
		if err := generate(binList, n); err != nil {
			return err
		}
	}
	f, err := os.Open(binList)
	if err != nil {
		return err
	}
	defer f.Close()
	var out bytes.Buffer
	aw := serialize.NewASCIIWriter(&out, binary.LittleEndian, serialize.SHA1, nil)
	res, err := serialize.Replay(teeSource{serialize.NewBinaryReader(f, binary.LittleEndian, 20), aw}, serialize.ReplayOptions{})
	if err != nil {
		return err
	}
	if err := aw.Flush(); err != nil {
		return err
	}
	if err := os.WriteFile(ascii, out.Bytes(), 0o644); err != nil {
		return err
	}
	var pcrs bytes.Buffer
	serialize.WritePCRFile(&pcrs, serialize.SHA1, res.PCRs)
	pf := filepath.Join(dir, fmt.Sprintf("pcrs-sha1-%d.txt", n))
	if err := os.WriteFile(pf, pcrs.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Printf("list: %d ima-ng records as the ASCII SHA1 list, %.1f MiB (%s)\n", n, float64(out.Len())/(1<<20), ascii)
	ours, oursRSS, err := best(runs, bin, "replay", "--format", "ascii", "--banks", "sha1", "--pcrs", "sha1,"+pf, ascii)
	if err != nil {
		return fmt.Errorf("imakexec: %w", err)
	}
	py := "python3"
	if _, err := exec.LookPath(py); err != nil {
		py = "/usr/bin/python3"
	}
	kl, klRSS, err := best(runs, py, tool, ascii, hex.EncodeToString(res.PCRs[10]["sha1"]), "sha1")
	if err != nil {
		return fmt.Errorf("keylime-replay: %w", err)
	}
	line("imakexec replay --format ascii", n, ours, oursRSS)
	line("keylime-replay (sha1)", n, kl, klRSS)
	ratio("imakexec", "Keylime", ours, kl, 1)
	return nil
}

// line prints one command's time, rate over n records and peak RSS.
func line(name string, n int, d time.Duration, rss float64) {
	fmt.Printf("%-34s %8.3f s %12.0f records/s  peak RSS %6.1f MiB\n", name, d.Seconds(), float64(n)/d.Seconds(), rss)
}

// ratio prints how many times faster a ran than b on the same records (digits decimals).
func ratio(a, b string, da, db time.Duration, digits int) {
	fmt.Printf("ratio (%s / %s records/s): %.*fx\n", a, b, digits, db.Seconds()/da.Seconds())
}

// teeSource writes every record it yields to an ASCII writer.
type teeSource struct {
	src serialize.Source
	aw  *serialize.ASCIIWriter
}

func (t teeSource) Next() (*serialize.Record, error) {
	rec, err := t.src.Next()
	if err == nil {
		err = t.aw.Write(rec)
	}
	return rec, err
}

func generate(path string, n int) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	w := serialize.NewBinaryWriter(bw, binary.LittleEndian, serialize.SHA1, nil)
	g := listgen.New(listgen.Options{Seed: 1})
	for i := 0; i < n; i++ {
		if err := w.Write(g.Next()); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// best runs the command runs times and returns the fastest wall time and the largest
// peak RSS (MiB). The command must succeed (exit 0: the replay matched).
func best(runs int, name string, args ...string) (time.Duration, float64, error) {
	var bestD time.Duration
	var rss float64
	for i := 0; i < runs; i++ {
		cmd := exec.Command(name, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return 0, 0, fmt.Errorf("%v: %s", err, out.String())
		}
		d := time.Since(start)
		if bestD == 0 || d < bestD {
			bestD = d
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			rss = max(rss, float64(ru.Maxrss)/1024)
		}
	}
	return bestD, rss, nil
}
