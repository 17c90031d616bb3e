package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/serialize"
)

// convertCmd converts between the kernel's list formats.
type convertCmd struct {
	to, from, bank, scheme string
}

func init() { register(&convertCmd{}) }

func (*convertCmd) Name() string  { return "convert" }
func (*convertCmd) Usage() string { return "--to binary|ascii|kexec [flags] IN [OUT]" }
func (*convertCmd) Synopsis() string {
	return "convert a list between the binary, ASCII and kexec-buffer formats"
}

func (c *convertCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.to, "to", "", "output format: binary, ascii or kexec (required)")
	fs.StringVar(&c.from, "from", "auto", "input format: auto, binary, ascii or kexec")
	fs.StringVar(&c.bank, "bank", "", "bank of the output digests (binary, ascii); default: the input's bank")
	fs.StringVar(&c.scheme, "scheme", "hash", "extend scheme used to compute digests for other banks: hash or pad")
}

func (c *convertCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return usageErrorf("want IN [OUT]")
	}
	to, err := serialize.ParseFormatName(c.to)
	if err != nil || to == serialize.FormatAuto {
		return usageErrorf("--to must be binary, ascii or kexec")
	}
	from, err := serialize.ParseFormatName(c.from)
	if err != nil {
		return usageErrorf("%v", err)
	}
	scheme, err := serialize.ParseScheme(c.scheme)
	if err != nil {
		return usageErrorf("%v", err)
	}
	in, closeIn, err := openInput(env, args[0])
	if err != nil {
		return err
	}
	defer closeIn()
	src, det, err := serialize.Open(in, from, digestSizeFromName(args[0]))
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if det.Format == serialize.FormatASCII {
		// The digest size of an ASCII list is known from its first line.
		first, err := src.Next()
		if err != nil && err != io.EOF {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		if first != nil {
			det.DigestSize = len(first.Digest)
			c := first.Clone()
			src = &pushback{rec: &c, src: src}
		}
	}
	srcBank, known := bankBySize(det.DigestSize)
	if det.Format == serialize.FormatKexec {
		srcBank, known = serialize.SHA1, true
	}
	bank := srcBank
	if c.bank != "" {
		if bank, err = serialize.ParseBank(c.bank); err != nil {
			return usageErrorf("%v", err)
		}
	} else if !known && det.DigestSize != 0 {
		return usageErrorf("cannot tell the input's bank; name it with --bank")
	}
	dg := &serialize.Digester{Order: det.Order, Scheme: scheme}
	// Digests are copied only when the output bank is the input's; otherwise computed.
	recompute := c.bank != "" && (!known || bank.Name != srcBank.Name)

	var out io.Writer = env.Stdout
	var outFile *os.File // seekable output, for the kexec header
	var dst *output
	if len(args) == 2 && args[1] != "-" {
		// A regular file is written beside the target and renamed, so a failed conversion
		// leaves no half file; a device or FIFO is written in place (createOutput).
		if dst, err = createOutput(args[1]); err != nil {
			return err
		}
		defer dst.abort()
		out, outFile = dst.f, dst.seekable()
	}
	var n int
	switch to {
	case serialize.FormatBinary:
		w := serialize.NewBinaryWriter(out, det.Order, bank, dg)
		w.Recompute = recompute
		n, err = copyRecords(ctx, src, w.Write)
		if err == nil {
			err = w.Flush()
		}
	case serialize.FormatASCII:
		w := serialize.NewASCIIWriter(out, det.Order, bank, dg)
		w.Recompute = recompute
		n, err = copyRecords(ctx, src, w.Write)
		if err == nil {
			err = w.Flush()
		}
	case serialize.FormatKexec:
		err = convertKexec(ctx, src, out, outFile, det.Order, dg, known && srcBank.Name == serialize.SHA1.Name)
	}
	if err != nil {
		return fmt.Errorf("%s: record %d: %w", args[0], n, err)
	}
	if dst != nil {
		return dst.commit()
	}
	return nil
}

func copyRecords(ctx context.Context, src serialize.Source, write func(*serialize.Record) error) (int, error) {
	n := 0
	for {
		if n%4096 == 0 && ctx.Err() != nil {
			return n, ctx.Err()
		}
		rec, err := src.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if err := write(rec); err != nil {
			return n, err
		}
		n++
	}
}

// convertKexec writes a kexec buffer. Its header needs the size and count, so a
// non-seekable output is spooled through a temporary file first.
func convertKexec(ctx context.Context, src serialize.Source, out io.Writer, outFile *os.File, order serialize.ByteOrder, dg *serialize.Digester, sha1Digests bool) error {
	ws := outFile
	if ws == nil {
		tmp, err := os.CreateTemp("", "imakexec-kexec-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		ws = tmp
	}
	kw, err := serialize.NewKexecWriter(ws, order, dg)
	if err != nil {
		return err
	}
	write := kw.Write
	if !sha1Digests {
		// Other banks' digests cannot go into the SHA1-only buffer: compute SHA1.
		write = func(r *serialize.Record) error {
			c := *r
			if !r.IsViolation() {
				c.Digest = nil
			} else {
				c.Digest = make([]byte, serialize.SHA1Size)
			}
			return kw.Write(&c)
		}
	}
	if _, err := copyRecords(ctx, src, write); err != nil {
		return err
	}
	if err := kw.Close(); err != nil {
		return err
	}
	if outFile == nil {
		if _, err := ws.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, err = io.Copy(out, ws)
		return err
	}
	return nil
}

// pushback returns rec before the records of src.
type pushback struct {
	rec *serialize.Record
	src serialize.Source
}

func (p *pushback) Next() (*serialize.Record, error) {
	if r := p.rec; r != nil {
		p.rec = nil
		return r, nil
	}
	return p.src.Next()
}
