package handover

import (
	"errors"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// TestDrainFlushHTableSaysWhy: Debian 7.2 (list files 0660 accepting N) booted with
// ima_flush_htable refuses N with EINVAL (_ima_measurements_write, 7.2): the drain must
// take a snapshot and say why it did not delete; asking for delete-n by name must fail
// with the same reason. Without the parameter nothing is said and delete-n is used.
func TestDrainFlushHTableSaysWhy(t *testing.T) {
	// One TPM simulator per process: each kernel in its own subtest.
	t.Run("debian-7.2/flush", func(t *testing.T) { drainFlushSaysWhy(t) })
	t.Run("debian-7.2", func(t *testing.T) {
		e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian72})
		e.work(10)
		r := e.mustDrain(BackendAuto)
		if r.Backend != BackendDeleteN || r.Note != "" || r.Deleted == 0 {
			t.Errorf("drain without ima_flush_htable: backend %s, deleted %d, note %q", r.Backend, r.Deleted, r.Note)
		}
	})
	// On the staging kernel the staged backend comes first: nothing to explain.
	t.Run("7.2/flush", func(t *testing.T) {
		e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72, FlushHTable: true})
		e.work(10)
		if r := e.mustDrain(BackendAuto); r.Backend != BackendStaged || r.Note != "" {
			t.Errorf("staging kernel with ima_flush_htable: backend %s, note %q", r.Backend, r.Note)
		}
	})
}

func drainFlushSaysWhy(t *testing.T) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.ProfileDebian72, FlushHTable: true})
	e.work(10)
	r := e.mustDrain(BackendAuto)
	if r.Backend != BackendSnapshot || r.Deleted != 0 {
		t.Fatalf("drain with ima_flush_htable: backend %s deleted %d, want a snapshot", r.Backend, r.Deleted)
	}
	for _, want := range []string{"ima_flush_htable is set", "refuses N", "does not use delete-n", "snapshot"} {
		if !strings.Contains(r.String(), want) {
			t.Errorf("drain result %q lacks %q", r, want)
		}
	}
	_, err := e.drain(BackendDeleteN, nil)
	if !errors.Is(err, ErrBackend) || !strings.Contains(err.Error(), "ima_flush_htable is set") {
		t.Errorf("drain --backend delete-n with ima_flush_htable: %v", err)
	}
	e.verify()
}
