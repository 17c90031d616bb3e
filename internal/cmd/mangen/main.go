// Command mangen writes the imakexec(8) man page from the command help, so that the page
// and --help never disagree: it runs "imakexec help" and "imakexec COMMAND --help" of a
// built binary and turns the text into roff.
//
//	go run ./internal/cmd/mangen -bin bin/imakexec -version 1.2.3 > imakexec.8
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

func main() {
	bin := flag.String("bin", "bin/imakexec", "imakexec binary to take the help from")
	version := flag.String("version", "", "version for the page footer")
	date := flag.String("date", "", "date for the page footer (default: SOURCE_DATE_EPOCH, else today)")
	flag.Parse()
	if err := run(os.Stdout, *bin, *version, *date); err != nil {
		fmt.Fprintln(os.Stderr, "mangen:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, bin, version, date string) error {
	top, err := helpText(bin, "help")
	if err != nil {
		return err
	}
	cmds := commandList(top)
	if len(cmds) == 0 {
		return fmt.Errorf("%s help lists no commands", bin)
	}
	if date == "" {
		date = time.Now().UTC().Format("2006-01-02")
		if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
			var sec int64
			if _, err := fmt.Sscan(s, &sec); err == nil {
				date = time.Unix(sec, 0).UTC().Format("2006-01-02")
			}
		}
	}
	b := &bytes.Buffer{}
	fmt.Fprintf(b, ".TH IMAKEXEC 8 %q %q \"System Administration\"\n", date, "imakexec "+version)
	b.WriteString(".SH NAME\nimakexec \\- keep the IMA measurement log whole and verifiable across record deletion and kexec\n")
	b.WriteString(".SH SYNOPSIS\n.B imakexec\n[\\fIglobal flags\\fR] \\fICOMMAND\\fR [\\fIflags\\fR] [\\fIargs\\fR]\n")
	b.WriteString(".SH DESCRIPTION\n")
	pre(b, top)
	b.WriteString(".SH COMMANDS\n")
	for _, c := range cmds {
		text, err := helpText(bin, c, "--help")
		if err != nil {
			return err
		}
		fmt.Fprintf(b, ".SS %s\n", esc(c))
		pre(b, text)
	}
	b.WriteString(".SH FILES\n")
	for _, f := range [][2]string{
		{"/var/lib/imakexec", "the handoff store of a host whose root is on disk"},
		{"/run/imakexec/handoff", "the handoff kept across switch_root by the initramfs-tools script or the dracut module"},
		{"/usr/lib/systemd/system-shutdown/imakexec", "the check and jump at the end of a kexec shutdown"},
	} {
		fmt.Fprintf(b, ".TP\n.I %s\n%s\n", esc(f[0]), esc(f[1]))
	}
	b.WriteString(".SH EXIT STATUS\n0 verified or done; 1 does not verify; 2 could not run (bad usage, unreadable input).\n")
	b.WriteString(".SH SEE ALSO\n.BR systemctl (1),\n.BR systemd-shutdown (8),\n.BR kexec (8),\n.BR evmctl (1)\n")
	_, err = w.Write(b.Bytes())
	return err
}

// helpText runs the binary; help goes to stdout (top level) or stderr (a command's flags).
func helpText(bin string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// commandList takes the names under "Commands:" of the top-level help.
func commandList(top string) []string {
	var out []string
	in := false
	sc := bufio.NewScanner(strings.NewReader(top))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "Commands:"):
			in = true
		case in && strings.TrimSpace(l) == "":
			return out
		case in:
			if f := strings.Fields(l); len(f) > 0 {
				out = append(out, f[0])
			}
		}
	}
	return out
}

// pre puts text in a no-fill block, escaped.
func pre(b *bytes.Buffer, text string) {
	b.WriteString(".nf\n")
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		l = esc(l)
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			l = "\\&" + l
		}
		b.WriteString(l + "\n")
	}
	b.WriteString(".fi\n")
}

func esc(s string) string { return strings.ReplaceAll(s, "\\", "\\e") }
