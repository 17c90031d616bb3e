package conformance_test

import (
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
	"github.com/imakexec/imakexec/internal/kmodel/kmodeltest"
	"github.com/imakexec/imakexec/testvm/conformance"
)

// modelEnv is the kernel model over FUSE.
type modelEnv struct{ env *kmodeltest.Env }

func (m modelEnv) IMADir() string { return m.env.IMADir }
func (m modelEnv) Measure(n int) error {
	_, err := m.env.Kernel.Synthetic(n)
	return err
}
func (m modelEnv) Suspend() error {
	_, err := m.env.Kernel.Suspend()
	return err
}

// KexecLoad loads the same kernel and an initramfs (measured as the default policy says:
// KEXEC_KERNEL_CHECK, KEXEC_INITRAMFS_CHECK, KEXEC_CMDLINE, the kexec_load record).
func (m modelEnv) KexecLoad() error {
	_, err := m.env.Kernel.KexecLoadFiles(kmodel.File{Path: "/boot/vmlinuz", Content: []byte("conformance kernel")},
		kmodel.File{Path: "/boot/initrd.img", Content: []byte("conformance initramfs")}, "console=ttyS0")
	return err
}

func (m modelEnv) KexecExecute() error { return m.env.Kernel.KexecExecute() }

// TestModelConformance runs the table against the model's 7.2 profiles over FUSE: every
// row, the ones a real kernel cannot show included, must give the kernel's answer. As in
// the guest, the chain of kexecs runs first and the file rows run in its last kernel.
func TestModelConformance(t *testing.T) {
	for _, tc := range []struct {
		p    kmodel.Profile
		kind conformance.Kind
	}{{kmodel.Profile72, conformance.Staging}, {kmodel.ProfileDebian72, conformance.NoStaging}} {
		t.Run(string(tc.p), func(t *testing.T) {
			env := kmodeltest.Mount(t, kmodel.Config{Profile: tc.p})
			rows, err := conformance.RunKexec(modelEnv{env}, tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				t.Logf("%-70s %s", r.Name, r.Got)
			}
			rows = append(rows, conformance.Run(modelEnv{env}, tc.kind)...)
			for _, d := range conformance.Compare(rows, tc.kind, false) {
				t.Error(d)
			}
			if len(rows) < 20 {
				t.Errorf("only %d rows ran", len(rows))
			}
		})
	}
}

// TestCompareNamesMissingRows: a row the table expects but the run did not produce is a
// difference, not a pass.
func TestCompareNamesMissingRows(t *testing.T) {
	d := conformance.Compare(nil, conformance.Staging, true)
	if len(d) == 0 {
		t.Fatal("an empty run compared clean")
	}
	for _, e := range conformance.Table {
		if e.ModelOnly != "" && e.Want[conformance.Staging] != "" {
			for _, s := range d {
				if len(s) > len(e.Name) && s[:len(e.Name)] == e.Name {
					t.Errorf("a model-only row is expected from a real kernel: %s", s)
				}
			}
		}
	}
}

// TestAfterRowsNameDifferences: the after-kexec rows see a list that lost its staged
// records, a count file that disagrees with the list, and a kexec_execute count that
// leaves out deleted records (the model's old rule).
func TestAfterRowsNameDifferences(t *testing.T) {
	env := modelEnv{kmodeltest.Mount(t, kmodel.Config{Profile: kmodel.Profile72})}
	st := conformance.StatesFor(conformance.Staging)[0]
	deleted, err := conformance.Prepare(env, st)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.KexecLoad(); err != nil {
		t.Fatal(err)
	}
	b, err := conformance.Snapshot(env, st.Name, deleted)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.KexecExecute(); err != nil {
		t.Fatal(err)
	}
	a, err := conformance.ReadAfter(env)
	if err != nil {
		t.Fatal(err)
	}
	if d := conformance.Compare(conformance.AfterRows(b, a), conformance.Staging, true); len(d) == 0 || !strings.Contains(strings.Join(d, "\n"), "not run") {
		t.Fatalf("one state's rows should leave the other states not run: %v", d)
	}
	got := func(b conformance.Before, a conformance.After) map[string]string {
		m := map[string]string{}
		for _, r := range conformance.AfterRows(b, a) {
			m[strings.TrimPrefix(r.Name, conformance.AfterRow(st.Name, ""))] = r.Got
		}
		return m
	}
	good := got(b, a)
	if good["next kernel's list"] != "staged, current, kexec_execute, boot_aggregate" {
		t.Fatalf("rows of a good kexec: %v", good)
	}
	lost := a
	lost.List = a.List[len(b.Staged):]
	lost.Count--
	if g := got(b, lost); g["next kernel's list"] == good["next kernel's list"] || g["next kernel's count"] == good["next kernel's count"] {
		t.Errorf("a list without its staged records, and a count one short, compare clean: %v", g)
	}
	miscount := b
	miscount.Deleted++
	if g := got(miscount, a); g["kexec_execute count"] == good["kexec_execute count"] {
		t.Errorf("a kexec_execute count that leaves out a deleted record compares clean: %v", g)
	}
}
