package kmodel_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/serialize"
)

// TestProfileWorkloads runs a scripted workload on every profile: measurements,
// violations and duplicates; staging, delete-N and trimming where the profile has them;
// three kexecs and a cold boot. After every step the saved records plus the list read
// through the mount must replay to the TPM in every bank.
func TestProfileWorkloads(t *testing.T) {
	for _, p := range kmodel.Profiles {
		t.Run(string(p), func(t *testing.T) {
			env := kmodeltest.Mount(t, kmodel.Config{Profile: p})
			k := env.Kernel
			f := p.Features()
			var saved []serialize.Record // records no longer in the kernel's list (or not carried)
			check := func(what string) {
				t.Helper()
				mustReplay(t, env, append(append([]serialize.Record(nil), saved...), list(t, env)...), what)
			}
			for cycle := 0; cycle < 3; cycle++ {
				k.Exec("/bin/hello", []byte("hello"))
				k.Read("/etc/probe.txt", []byte("probe"))
				k.Violation("/var/log/tomtou")
				if n, err := k.Synthetic(20); err != nil || n != 20 {
					t.Fatalf("synthetic: %d %v", n, err)
				}
				k.Buffer("kexec-cmdline", []byte("console=ttyS0"))
				if r, _ := k.Exec("/bin/hello", []byte("hello")); r.Outcome != kmodel.OutcomeCached {
					t.Errorf("re-exec: %v", r.Outcome)
				}
				if r, _ := k.Buffer("kexec-cmdline", []byte("console=ttyS0")); r.Outcome != kmodel.OutcomeDuplicate {
					t.Errorf("same buffer again: %v", r.Outcome)
				}
				check(fmt.Sprintf("cycle %d measured", cycle))
				if f.Staging {
					st := filepath.Join(env.IMADir, "binary_runtime_measurements_sha1_staged")
					w, err := os.OpenFile(st, os.O_RDWR, 0)
					if err != nil {
						t.Fatal(err)
					}
					defer w.Close()
					if _, err := w.Write([]byte("A\n")); err != nil {
						t.Fatal(err)
					}
					// The write moved the file offset; seq_read would skip 2 bytes.
					if _, err := w.Seek(0, io.SeekStart); err != nil {
						t.Fatal(err)
					}
					b, err := io.ReadAll(w)
					if err != nil {
						t.Fatal(err)
					}
					staged := parseList(t, b, 20)
					if len(staged) == 0 {
						t.Fatal("nothing staged")
					}
					saved = append(saved, staged...)
					if c := k.Counters(); c.RuntimeMeasurementsCount != 0 {
						t.Errorf("count after A: %d", c.RuntimeMeasurementsCount)
					}
					w.Close() // readers of the list would get EBUSY while the writer is open
					k.Exec("/bin/between", []byte(fmt.Sprint("between", cycle)))
					check("staged, not deleted") // staged records are in saved and still in the kernel
					if err := writeFile(st, os.O_WRONLY, "D\n"); err != nil {
						t.Fatal(err)
					}
					check("after D")
					k.Synthetic(5)
					cur := list(t, env)
					if err := writeFile(filepath.Join(env.IMADir, "ascii_runtime_measurements_sha256"), os.O_WRONLY, "3\n"); err != nil {
						t.Fatal(err)
					}
					saved = append(saved, cur[:3]...)
					check("after N")
				}
				if f.TrimLog {
					trim := filepath.Join(env.IMADir, "ima_trim_log")
					b, err := os.ReadFile(trim)
					if err != nil {
						t.Fatal(err)
					}
					T, _ := strconv.Atoi(strings.TrimSpace(string(b)))
					cur := list(t, env)
					if err := writeFile(trim, os.O_WRONLY, fmt.Sprintf("%d:2\n", T)); err != nil {
						t.Fatal(err)
					}
					saved = append(saved, cur[:2]...)
					check("after trim")
				}
				// kexec.
				if err := k.KexecLoad([]byte(fmt.Sprint("kernel", cycle)), []byte(fmt.Sprint("initrd", cycle)), "console=ttyS0 cycle="+fmt.Sprint(cycle)); err != nil {
					t.Fatal(err)
				}
				if _, err := k.Suspend(); err != nil {
					t.Fatal(err)
				}
				atJump := list(t, env)
				check("at the jump")
				if err := k.KexecExecute(); err != nil {
					t.Fatal(err)
				}
				if err := k.RestoreError(); err != nil {
					t.Fatal(err)
				}
				after := list(t, env)
				if !f.IMAKexec {
					saved = append(saved, atJump...)
					if len(after) != 1 {
						t.Errorf("without IMA_KEXEC the new list has %d records", len(after))
					}
				} else if len(after) != len(atJump)+1 {
					t.Errorf("carried list: %d records after, %d at the jump", len(after), len(atJump))
				}
				check(fmt.Sprintf("after kexec %d", cycle+1))
				if f.IMAKexec {
					mustNotReplay(t, env, after[len(atJump):], "new kernel's own records alone")
				}
			}
			before, _ := kmodel.ResetCount(env.TPM)
			if err := k.ColdBoot(); err != nil {
				t.Fatal(err)
			}
			afterRC, _ := kmodel.ResetCount(env.TPM)
			if afterRC == before {
				t.Errorf("resetCount unchanged by a cold boot: %d", before)
			}
			saved = nil
			k.Exec("/bin/hello", []byte("hello"))
			check("after cold boot")
		})
	}
}

// TestCarryOverShapes reproduces what the real 6.1 kernels showed in QEMU (the captures in
// serialize/testdata/vm: restored records, then a second boot_aggregate).
func TestCarryOverShapes(t *testing.T) {
	policy := kmodel.DefaultPolicy
	t.Run("debian", func(t *testing.T) {
		env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.ProfileDebian61, Policy: policy})
		k := env.Kernel
		boot1 := list(t, env)
		if len(boot1) != 1 || serialize.EventName(&boot1[0], le) != "boot_aggregate" {
			t.Fatalf("boot 1 list: %d records", len(boot1))
		}
		k.KexecLoad([]byte("k"), []byte("i"), "")
		boot1 = list(t, env)
		k.KexecExecute()
		boot2 := list(t, env)
		if len(boot2) != 1 || !bytes.Equal(boot2[0].Data, boot1[0].Data) || !bytes.Equal(boot2[0].Digest, boot1[0].Digest) {
			t.Fatalf("boot 2 should be one boot_aggregate identical to boot 1's; got %d records", len(boot2))
		}
		mustNotReplay(t, env, boot2, "boot 2 alone")
		mustReplay(t, env, append(boot1, boot2...), "boot 1 + boot 2")
		k.KexecLoad([]byte("k"), []byte("i"), "")
		boot2 = list(t, env)
		k.KexecExecute()
		mustReplay(t, env, append(append(boot1, boot2...), list(t, env)...), "boot 1 + 2 + 3")
	})
	t.Run("ima-kexec", func(t *testing.T) {
		env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile61IMAKexec, Policy: policy})
		k := env.Kernel
		k.Exec("/bin/hello", []byte("hello"))
		k.Read("/etc/probe.txt", []byte("probe"))
		k.KexecLoadFiles(kmodel.File{Path: "/boot/vmlinuz", Content: []byte("kernel")}, kmodel.File{Path: "/tmp/kexec-initramfs.cpio", Content: []byte("initrd")}, "console=ttyS0")
		boot1 := list(t, env)
		if err := k.KexecExecute(); err != nil {
			t.Fatal(err)
		}
		k.Exec("/bin/hello", []byte("hello"))
		k.Read("/etc/probe.txt", []byte("probe"))
		k.Read("/carry/message.txt", []byte("message"))
		boot2 := list(t, env)
		n := len(boot1)
		if len(boot2) != n+4 {
			t.Fatalf("boot 2 has %d records, want %d carried + 4", len(boot2), n)
		}
		for i := 0; i < n; i++ {
			if !bytes.Equal(boot2[i].Data, boot1[i].Data) {
				t.Errorf("record %d not carried unchanged", i)
			}
		}
		if !bytes.Equal(boot2[n].Data, boot1[0].Data) || serialize.EventName(&boot2[n], le) != "boot_aggregate" {
			t.Errorf("record %d is not a second, identical boot_aggregate", n)
		}
		if !bytes.Equal(boot2[n+1].Digest, boot1[1].Digest) || !bytes.Equal(boot2[n+2].Digest, boot1[2].Digest) {
			t.Errorf("re-measured files are not duplicates of boot 1's records")
		}
		mustReplay(t, env, boot2, "boot 2 alone")
		mustNotReplay(t, env, append(boot1, boot2...), "boot 1 + boot 2 (double count)")

		// k2: a file read between load and jump is lost.
		k.KexecLoad([]byte("kernel"), []byte("initrd2"), "console=ttyS0")
		k.Read("/postload", []byte("post load"))
		atJump := list(t, env)
		k.KexecExecute()
		boot3 := list(t, env)
		if len(boot3) != len(atJump) {
			t.Errorf("boot 3 has %d records: want %d (all but the post-load one, plus boot_aggregate)", len(boot3), len(atJump))
		}
		mustNotReplay(t, env, boot3, "boot 3 alone, record lost between load and jump")
		mustReplay(t, env, append(append([]serialize.Record(nil), atJump...), boot3[len(atJump)-1:]...), "boot 2 at the jump + boot 3's own records")
	})
}

// TestKexecBufferBytes checks that the buffer the model hands over parses with serialize
// and equals what serialize's kexec writer makes of the same list (staged first).
func TestKexecBufferBytes(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})
	k := env.Kernel
	k.Synthetic(10)
	k.Violation("/tmp/v")
	if err := writeFile(filepath.Join(env.IMADir, "binary_runtime_measurements_sha1_staged"), os.O_WRONLY, "A\n"); err != nil {
		t.Fatal(err)
	}
	k.Buffer("kexec-cmdline", []byte("root=/dev/vda"))
	k.Synthetic(3)
	k.KexecLoad([]byte("k"), []byte("i"), "x")
	k.Suspend()
	recs := append(k.Staged(), k.List()...)
	ws := &memFile{}
	kw, err := serialize.NewKexecWriter(ws, le, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if err := kw.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	kw.Close()
	res, err := k.KexecExecuteResult()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(res.Buffer, ws.b) {
		t.Fatalf("handover buffer (%d bytes) differs from serialize's (%d bytes)", len(res.Buffer), len(ws.b))
	}
	kr, err := serialize.NewKexecReader(bytes.NewReader(res.Buffer), le)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, err := kr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != len(recs) || res.Restored != n {
		t.Fatalf("buffer has %d records, restored %d, list had %d", n, res.Restored, len(recs))
	}
	mustReplay(t, env, list(t, env), "restored list")
}

// TestKexecOverflow: 6.16 sizes the segment at load; heavy measurement after the load
// overflows it at execute, the last record is cut and the restore stops there
// (ima_dump_measurement_list, ima_restore_measurement_list).
func TestKexecOverflow(t *testing.T) {
	env := kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile616, ExtraMemoryKB: 1})
	k := env.Kernel
	k.Synthetic(5)
	res, err := k.KexecLoadFiles(kmodel.File{Path: "/k", Content: []byte("k")}, kmodel.File{Path: "/i", Content: []byte("i")}, "")
	if err != nil || res.SegmentSize == 0 {
		t.Fatalf("load: %+v %v", res, err)
	}
	k.Synthetic(100)
	atJump := list(t, env)
	ex, err := k.KexecExecuteResult()
	if err != nil {
		t.Fatal(err)
	}
	if !ex.Truncated || int64(ex.BufferBytes) != res.SegmentSize || ex.RestoreError == "" || ex.Restored >= len(atJump) {
		t.Fatalf("overflow not modelled: %+v (segment %d, %d records at jump)", ex, res.SegmentSize, len(atJump))
	}
	mustNotReplay(t, env, list(t, env), "list after an overflowed handover")
}

type memFile struct {
	b   []byte
	off int64
}

func (m *memFile) Write(p []byte) (int, error) {
	if end := m.off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	copy(m.b[m.off:], p)
	m.off += int64(len(p))
	return len(p), nil
}

func (m *memFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += m.off
	case io.SeekEnd:
		off += int64(len(m.b))
	}
	m.off = off
	return off, nil
}

// TestDefaultCmdlineTemplateParam: a built-in template is chosen with ima_template=, a
// custom format with ima_template_fmt= (ima_template_setup accepts names only and falls
// back to the default template for anything else; ima_template_fmt_setup, 7.2).
func TestDefaultCmdlineTemplateParam(t *testing.T) {
	for tmpl, want := range map[string]string{
		"ima-ng":      " ima_template=ima-ng ",
		"ima-sigv2":   " ima_template=ima-sigv2 ",
		"d-ngv2|n-ng": " ima_template_fmt=d-ngv2|n-ng ",
		"d-ng|n-ng":   " ima_template_fmt=d-ng|n-ng ",
	} {
		got := kmodel.DefaultCmdline(kmodel.Config{Profile: kmodel.Profile72, Template: tmpl})
		if !strings.Contains(got, want) {
			t.Errorf("template %q: cmdline %q lacks %q", tmpl, got, want)
		}
	}
}
