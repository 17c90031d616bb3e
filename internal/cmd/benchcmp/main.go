// Command benchcmp times `imakexec replay` against `evmctl ima_measurement` on the same
// generated list (make bench). It prints records/s for each, their ratio, and peak RSS.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
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
	flag.Parse()
	if err := run(*n, *bin, *dir, *runs); err != nil {
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
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	fmt.Printf("%-34s %8.3f s %12.0f records/s  peak RSS %6.1f MiB\n", "imakexec replay --banks sha1,sha256", ours.Seconds(), rate(ours), oursRSS)
	fmt.Printf("%-34s %8.3f s %12.0f records/s  peak RSS %6.1f MiB\n", "evmctl ima_measurement", evm.Seconds(), rate(evm), evmRSS)
	fmt.Printf("ratio (imakexec / evmctl records/s): %.1fx\n", rate(ours)/rate(evm))
	return nil
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
