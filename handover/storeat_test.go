package handover

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imakexec/imakexec/internal/kmodel"
)

// lockedStore drains a few segments into a fresh store and returns it locked for writing,
// with the records of its last segment, as a writer sees them once its checks are done.
func lockedStore(t *testing.T) (*kenv, *Store, Segment, int) {
	e := newKenv(t, kmodel.Config{Profile: kmodel.Profile72})
	storeWithSegments(t, e, 2)
	s := &Store{dir: e.store}
	if err := s.Lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Unlock() })
	segs := s.Segments()
	return e, s, segs[len(segs)-1], len(s.entries)
}

// dirEntries lists dir (nothing for a missing one).
func dirEntries(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// A symlink put in place of segments/ after the writer's checks (the lock) is never
// followed: the segment writer refuses it and nothing is written where it points.
func TestSegmentWriterRefusesSwappedSegmentsDir(t *testing.T) {
	e, s, last, _ := lockedStore(t)
	recs, err := readSegment(s, &last)
	if err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(t.TempDir(), "elsewhere")
	if err := os.Rename(filepath.Join(e.store, segmentsDir), evil); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(evil, filepath.Join(e.store, segmentsDir)); err != nil {
		t.Fatal(err)
	}
	before := dirEntries(t, evil)
	sg := last
	sg.Source, sg.Duplicates = SourceDuplicate, &DupRef{BootID: last.Boot.BootID, From: last.Boot.FirstIndex, To: last.Boot.FirstIndex + last.Count}
	sg.Boot.FirstIndex += last.Count
	_, err = s.writeSegment(sg, recs, "", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("segment written through a symlinked segments/: %v, want an error naming the symlink", err)
	}
	if after := dirEntries(t, evil); len(after) != len(before) {
		t.Fatalf("the symlink's target changed from %v to %v", before, after)
	}
}

// The store directory itself replaced by a symlink after the lock: the manifest append and
// a new segment land in the directory that was checked, never in the symlink's target.
func TestStoreWritesStayInCheckedDir(t *testing.T) {
	e, s, last, n := lockedStore(t)
	recs, err := readSegment(s, &last)
	if err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(t.TempDir(), "moved")
	if err := os.Rename(e.store, moved); err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(t.TempDir(), "evil")
	if err := os.MkdirAll(filepath.Join(evil, segmentsDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(evil, e.store); err != nil {
		t.Fatal(err)
	}
	sg := last
	sg.Source, sg.Duplicates = SourceDuplicate, &DupRef{BootID: last.Boot.BootID, From: last.Boot.FirstIndex, To: last.Boot.FirstIndex + last.Count}
	sg.Boot.FirstIndex += last.Count
	if _, err := s.writeSegment(sg, recs, "", nil, nil); err != nil {
		t.Fatalf("write a segment after the store directory was swapped: %v", err)
	}
	if got := dirEntries(t, filepath.Join(evil, segmentsDir)); len(got) != 0 {
		t.Fatalf("segments written through the swapped-in symlink: %v", got)
	}
	if got := dirEntries(t, evil); len(got) != 1 {
		t.Fatalf("files written through the swapped-in symlink: %v", got)
	}
	ms, err := OpenStore(moved)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms.entries) != n+1 || ms.entries[n].Segment == nil || ms.entries[n].Segment.Duplicates == nil {
		t.Fatalf("the checked store has %d entries, want %d ending with the new segment", len(ms.entries), n+1)
	}
	if _, err := os.Lstat(filepath.Join(moved, ms.entries[n].Segment.File)); err != nil {
		t.Fatalf("the new segment is not in the checked store: %v", err)
	}
	// Archive too works on the checked directory (its reload of the manifest by name then
	// refuses the symlink).
	if _, err := s.Archive("swap"); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("archive of a store swapped for a symlink: %v, want the reload to refuse the symlink", err)
	}
	if got := dirEntries(t, evil); len(got) != 1 {
		t.Fatalf("archive wrote through the swapped-in symlink: %v", got)
	}
	arch := dirEntries(t, filepath.Join(moved, archiveDir))
	if len(arch) != 1 {
		t.Fatalf("archives in the checked store: %v", arch)
	}
	if _, err := os.Lstat(filepath.Join(moved, archiveDir, arch[0], manifestName)); err != nil {
		t.Fatalf("the archived manifest is not in the checked store: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(moved, manifestName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the manifest was not moved out of the checked store: %v", err)
	}
}

// An archive/ that is a symlink is refused, nothing moved.
func TestArchiveRefusesSymlinkedArchiveDir(t *testing.T) {
	e, s, _, n := lockedStore(t)
	evil := t.TempDir()
	if err := os.Symlink(evil, filepath.Join(e.store, archiveDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Archive("x"); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("archive into a symlinked archive/: %v, want an error naming the symlink", err)
	}
	if got := dirEntries(t, evil); len(got) != 0 {
		t.Fatalf("archive wrote through the symlink: %v", got)
	}
	if ms, err := OpenStore(e.store); err != nil || len(ms.entries) != n {
		t.Fatalf("the store after a refused archive: %v", err)
	}
}
