package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"

	"github.com/imakexec/imakexec/handover"
	"github.com/imakexec/imakexec/serialize"
)

// exportCmd writes the whole chain in the kernel's formats.
type exportCmd struct {
	store, proc, format, bank, out, state string
	appendTo                              string
	from                                  uint64
	storeOnly                             bool
}

func init() { register(&exportCmd{}) }

func (*exportCmd) Name() string { return "export" }
func (*exportCmd) Synopsis() string {
	return "write the chain (store + live list) in the kernel's binary, ASCII or kexec format"
}
func (*exportCmd) Usage() string {
	return "--format binary|ascii|kexec [--bank B] [--from SEQ] [-o FILE | --append FILE] [--store DIR]"
}

func (c *exportCmd) SetFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.store, "store", handover.DefaultStoreDir, "handoff store directory")
	fs.StringVar(&c.proc, "proc", handover.DefaultPaths().Proc, "procfs mount point")
	fs.StringVar(&c.format, "format", "binary", "output format: binary, ascii or kexec")
	fs.StringVar(&c.bank, "bank", "sha1", "bank of the template digests (binary, ascii)")
	fs.Uint64Var(&c.from, "from", 0, "skip the first SEQ records; their replayed PCR state is written to --state (or stderr)")
	fs.StringVarP(&c.out, "output", "o", "", "output file (default stdout), replaced by rename when it is a regular file (a reader that keeps it open keeps the old one); a character device or FIFO is written in place; a symlink is refused")
	fs.StringVar(&c.appendTo, "append", "", "write in place to FILE, which must hold an earlier export of this chain in this format (binary or ascii): its bytes are checked and only what follows is appended, so readers that keep FILE open see it grow")
	fs.StringVar(&c.state, "state", "", "with --from: write the PCR state to resume from as JSON to this file")
	fs.BoolVar(&c.storeOnly, "store-only", false, "leave out the live records not stored yet")
}

func (c *exportCmd) Run(ctx context.Context, env *Env, args []string) error {
	if len(args) != 0 {
		return usageErrorf("export takes no arguments")
	}
	format, err := serialize.ParseFormatName(c.format)
	if err != nil || format == serialize.FormatAuto {
		return usageErrorf("--format must be binary, ascii or kexec")
	}
	bank, err := serialize.ParseBank(c.bank)
	if err != nil {
		return usageErrorf("%v", err)
	}
	if c.appendTo != "" && (c.out != "" || c.from > 0 || format == serialize.FormatKexec) {
		return usageErrorf("--append takes the whole chain in binary or ascii format, without -o or --from")
	}
	var out io.Writer = env.Stdout
	var f *os.File // seekable output file, for the kexec header
	var dst *output
	var app *appender
	switch {
	case c.appendTo != "":
		if app, err = openAppend(c.appendTo); err != nil {
			return err
		}
		defer app.f.Close()
		out = app
	case c.out != "" && c.out != "-":
		if dst, err = createOutput(c.out); err != nil {
			return err
		}
		defer dst.abort()
		out, f = dst.f, dst.seekable()
	}
	le := binary.LittleEndian
	o := handover.ExportOptions{ChainOptions: handover.ChainOptions{Paths: handover.Paths{Securityfs: env.Global.Securityfs, Proc: c.proc}, StoreDir: c.store, StoreOnly: c.storeOnly}, From: c.from}
	var res *handover.ExportResult
	switch format {
	case serialize.FormatBinary:
		w := serialize.NewBinaryWriter(out, le, bank, nil)
		if res, err = handover.Export(ctx, o, w.Write); err == nil {
			err = w.Flush()
		}
	case serialize.FormatASCII:
		w := serialize.NewASCIIWriter(out, le, bank, nil)
		if res, err = handover.Export(ctx, o, w.Write); err == nil {
			err = w.Flush()
		}
	case serialize.FormatKexec:
		ws := f
		if ws == nil {
			if ws, err = os.CreateTemp("", "imakexec-export-*"); err != nil {
				return err
			}
			defer os.Remove(ws.Name())
			defer ws.Close()
		}
		kw, kerr := serialize.NewKexecWriter(ws, le, nil)
		if kerr != nil {
			return kerr
		}
		if res, err = handover.Export(ctx, o, kw.Write); err == nil {
			err = kw.Close()
		}
		if err == nil && f == nil {
			if _, err = ws.Seek(0, io.SeekStart); err == nil {
				_, err = io.Copy(out, ws)
			}
		}
	}
	if err != nil {
		return err
	}
	switch {
	case dst != nil:
		if err := dst.commit(); err != nil {
			return err
		}
	case app != nil:
		n, err := app.finish()
		if err != nil {
			return err
		}
		if env.Global.Verbose {
			fmt.Fprintf(env.Stderr, "export: %s: %d bytes were there, %d appended (%d records in the chain)\n", c.appendTo, app.size, n, res.Records)
		}
	}
	if c.from > 0 || c.state != "" {
		st := map[string]any{"from": res.From, "records": res.Records, "pcrs": pcrJSON(res.State)}
		w := env.Stderr
		if c.state != "" {
			sf, err := os.Create(c.state)
			if err != nil {
				return err
			}
			defer sf.Close()
			w = sf
		}
		if err := writeJSON(w, st); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
	}
	return nil
}
