package conformance_test

import (
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

// TestModelConformance runs the table against the model's 7.2 profiles over FUSE: every
// row, the ones a real kernel cannot show included, must give the kernel's answer.
func TestModelConformance(t *testing.T) {
	for _, tc := range []struct {
		p    kmodel.Profile
		kind conformance.Kind
	}{{kmodel.Profile72, conformance.Staging}, {kmodel.ProfileDebian72, conformance.NoStaging}} {
		t.Run(string(tc.p), func(t *testing.T) {
			env := kmodeltest.Mount(t, kmodel.Config{Profile: tc.p})
			rows := conformance.Run(modelEnv{env}, tc.kind)
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
