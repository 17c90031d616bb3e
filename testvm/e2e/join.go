package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/imakexec/imakexec/initramfs"
	"github.com/imakexec/imakexec/serialize"
)

var le = binary.LittleEndian

// Segment is one manifest segment entry, as far as the host check needs it.
type Segment struct {
	Line   int // manifest line (from 0)
	File   string
	Count  int
	Source string
	BootID string
	First  int // first_index in its kernel's list
	Recs   []serialize.Record
}

// ReadStore parses a store sent by the guest (manifest.jsonl and segments) without
// package handover: the host check must not share the code it checks.
func ReadStore(files map[string][]byte) (segs []Segment, manifestLines [][]byte, err error) {
	man, ok := files["manifest.jsonl"]
	if !ok {
		return nil, nil, errors.New("store has no manifest.jsonl")
	}
	sc := bufio.NewScanner(bytes.NewReader(man))
	sc.Buffer(nil, 1<<20)
	for i := 0; sc.Scan(); i++ {
		line := append([]byte(nil), sc.Bytes()...)
		manifestLines = append(manifestLines, line)
		var e struct {
			Type    string `json:"type"`
			Segment struct {
				File   string `json:"file"`
				Count  int    `json:"count"`
				Source string `json:"source"`
				Boot   struct {
					BootID     string `json:"boot_id"`
					FirstIndex int    `json:"first_index"`
				} `json:"boot"`
			} `json:"segment"`
		}
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, nil, fmt.Errorf("manifest line %d: %w", i, err)
		}
		if e.Type != "segment" {
			continue
		}
		s := Segment{Line: i, File: e.Segment.File, Count: e.Segment.Count, Source: e.Segment.Source,
			BootID: e.Segment.Boot.BootID, First: e.Segment.Boot.FirstIndex}
		data, ok := files[s.File]
		if !ok {
			return nil, nil, fmt.Errorf("manifest names %s, which the store does not have", s.File)
		}
		kr, err := serialize.NewKexecReader(bytes.NewReader(data), le)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", s.File, err)
		}
		for {
			r, err := kr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", s.File, err)
			}
			s.Recs = append(s.Recs, r.Clone())
		}
		if len(s.Recs) != s.Count {
			return nil, nil, fmt.Errorf("%s: %d records, manifest says %d", s.File, len(s.Recs), s.Count)
		}
		segs = append(segs, s)
	}
	return segs, manifestLines, sc.Err()
}

// ReadList parses a binary_runtime_measurements (SHA1 list).
func ReadList(b []byte) ([]serialize.Record, error) {
	src := serialize.NewBinaryReader(bytes.NewReader(b), le, sha1.Size)
	var out []serialize.Record
	for {
		r, err := src.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r.Clone())
	}
}

// ReadPCRs parses the guest's pcrs-sha1.txt and pcrs-sha256.txt.
func ReadPCRs(sha1File, sha256File []byte) (serialize.PCRValues, error) {
	pcrs := serialize.PCRValues{}
	for _, f := range []struct {
		b    []byte
		bank serialize.Bank
	}{{sha1File, serialize.SHA1}, {sha256File, serialize.SHA256}} {
		if err := serialize.ParsePCRFile(bytes.NewReader(f.b), f.bank, pcrs); err != nil {
			return nil, err
		}
	}
	return pcrs, nil
}

// Replay replays records (5.8+ scheme, both banks; stored SHA1 digests must match the data).
func Replay(recs []serialize.Record) (*serialize.Result, error) {
	return serialize.Replay(serialize.NewSliceSource(recs), serialize.ReplayOptions{
		Banks: []serialize.Bank{serialize.SHA1, serialize.SHA256}, DigestBank: &serialize.SHA1})
}

// Matches reports whether recs replay exactly to the PCR 10 values in both banks.
func Matches(recs []serialize.Record, pcrs serialize.PCRValues) (bool, error) {
	res, err := Replay(recs)
	if err != nil {
		return false, err
	}
	for _, bank := range []string{"sha1", "sha256"} {
		if !bytes.Equal(res.PCRs[10][bank], pcrs[10][bank]) {
			return false, nil
		}
	}
	return true, nil
}

// Name returns a record's event name.
func Name(r *serialize.Record) string { return serialize.EventName(r, le) }

// WindowRecords rebuilds the kexec-window records the old kernel measured after imakexec
// kexec's last drain, from what the next kernel has: the carried store and /proc/cmdline.
// template is the old kernel's template for file records (ima_template=, "ima-ng" on the
// scenarios' command line by default). postDrain are the store files (store path, bytes)
// that were read after the drain, in the order the kernel measured them. Observed on
// Debian 6.1 (see README of serialize/testdata/vm/kexec-window): the drain's read-back of
// the segment it wrote, the post-drain read of the manifest, then KEXEC_INITRAMFS_CHECK
// "memfd:imakexec-initrd" (the file template, digest from imakexec.initrd=), then
// "kexec-cmdline" (ima-buf, the next kernel's /proc/cmdline without the newline). The
// kernel image adds none (it was measured when opened before the drain).
func WindowRecords(cmdline, template string, postDrain []StoreRead) ([]serialize.Record, error) {
	cmdline = strings.TrimRight(cmdline, "\n")
	var out []serialize.Record
	file := func(name string, data []byte) error {
		s256, s1 := sha256.Sum256(data), sha1.Sum(data)
		r, err := serialize.BuildRecord(template, serialize.Measured{PCR: 10, Algo: "sha256", Digest: s256[:], SHA1: s1[:], Name: name}, le)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	}
	for _, r := range postDrain {
		if err := file(r.Path, r.Data); err != nil {
			return nil, err
		}
	}
	d := initramfs.InitrdDigests(cmdline)["sha256"]
	if len(d) == 0 {
		return nil, fmt.Errorf("no %s=sha256:... on the command line %q", initramfs.CmdlineParam, cmdline)
	}
	// The d-ng field uses the ima_hash digest; SHA1 is only needed by "ima".
	r, err := serialize.BuildRecord(template, serialize.Measured{PCR: 10, Algo: "sha256", Digest: d, SHA1: make([]byte, 20), Name: "memfd:" + initramfs.MemfdName}, le)
	if err != nil {
		return nil, err
	}
	out = append(out, r)
	buf := []byte(cmdline)
	b256, b1 := sha256.Sum256(buf), sha1.Sum(buf)
	r, err = serialize.BuildRecord("ima-buf", serialize.Measured{PCR: 10, Algo: "sha256", Digest: b256[:], SHA1: b1[:], Name: "kexec-cmdline", Buf: buf, IsBuffer: true}, le)
	if err != nil {
		return nil, err
	}
	return append(out, r), nil
}

// StoreRead is a store file read (and measured) after the last drain.
type StoreRead struct {
	Path string
	Data []byte
}

// Join is the host's own join of a finished scenario.
type Join struct {
	Records []serialize.Record
	// Parts says where the records come from, in order ("store boot 1: 16", "window 1: 4
	// reconstructed: ...", "live: 10").
	Parts   []string
	Windows [][]string // per kexec, the names of the window records used
	Boots   []int      // records per boot (window records counted with the old boot)
}

// HostJoin joins the final generation's store and live list, trying for every kexec the
// window candidates (nothing; the two kexec_file_load records; the post-drain store reads
// plus those), and returns the join that replays exactly to the final PCRs in both banks.
// storeDir is the store path in the guest. kernelCarries: the kernel carried its list
// (CONFIG_IMA_KEXEC), so the live list holds the old boots already.
func HostJoin(r *Run, storeDir string) (*Join, error) { return HostJoinAt(r, storeDir, "final/") }

// HostJoinAt is HostJoin with the live list and PCRs of another snapshot of the last
// generation ("verify/", "export/").
func HostJoinAt(r *Run, storeDir, snap string) (*Join, error) {
	last := r.Last()
	if last == nil {
		return nil, errors.New("no generation reported")
	}
	store := last.StoreFiles("store/")
	segs, manLines, err := ReadStore(store)
	if err != nil {
		return nil, err
	}
	live, err := ReadList(last.Blobs[snap+"binary_runtime_measurements"])
	if err != nil {
		return nil, fmt.Errorf("live list: %w", err)
	}
	pcrs, err := ReadPCRs(last.Blobs[snap+"pcrs-sha1.txt"], last.Blobs[snap+"pcrs-sha256.txt"])
	if err != nil {
		return nil, err
	}
	finalBoot := strings.TrimSpace(string(last.Blobs["boot_id"]))

	// Store segments of earlier boots, grouped by boot; the final boot's own segments must
	// equal the live list where they say they came from.
	type bootSegs struct {
		id   string
		segs []Segment
	}
	var boots []*bootSegs
	// A 7.2 kernel deletes what a drain stored: the live list starts at the final boot's
	// deletion point, and the deleted records exist only in the store.
	finalDeleted := deletedThrough(manLines, finalBoot)
	byIndex := map[int]serialize.Record{}
	for _, s := range segs {
		if s.BootID == finalBoot && s.Source != "reconstructed" {
			for i, rec := range s.Recs {
				j := s.First + i
				if j < finalDeleted {
					byIndex[j] = rec
					continue
				}
				if j-finalDeleted >= len(live) || !bytes.Equal(live[j-finalDeleted].Data, rec.Data) {
					return nil, fmt.Errorf("store segment %s record %d differs from live record %d", s.File, i, j-finalDeleted)
				}
			}
			continue
		}
		if len(boots) == 0 || boots[len(boots)-1].id != s.BootID {
			boots = append(boots, &bootSegs{id: s.BootID})
		}
		boots[len(boots)-1].segs = append(boots[len(boots)-1].segs, s)
	}
	finalStored := make([]serialize.Record, finalDeleted)
	for i := range finalStored {
		rec, ok := byIndex[i]
		if !ok {
			return nil, fmt.Errorf("the final kernel deleted its records [0,%d) but the store lacks record %d", finalDeleted, i)
		}
		finalStored[i] = rec
	}
	if r.Scenario.KernelCarries {
		// The final kernel's whole list: what it deleted (in the store), then the live list.
		full := append(append([]serialize.Record{}, finalStored...), live...)
		return carriedJoin(r, boots[0].segs, deletedThrough(manLines, boots[0].id), full, pcrs)
	}
	// Window candidates per kexec k: boot k's window is rebuilt from generation k+1's
	// command line; the manifest read after the drain is a prefix of the final manifest.
	cands := make([][][]serialize.Record, len(boots))
	for k, b := range boots {
		var g *Gen
		for _, gg := range r.Gens {
			if strings.TrimSpace(string(gg.Blobs["boot_id"])) == b.id && gg.N < len(r.Gens) {
				g = r.Gens[gg.N] // the next generation (Gens[i].N == i+1)
			}
		}
		cands[k] = [][]serialize.Record{nil}
		if g == nil {
			continue
		}
		cmdline := string(g.Blobs["cmdline"])
		w, err := WindowRecords(cmdline, r.Scenario.Template(), nil)
		if err != nil {
			return nil, err
		}
		cands[k] = append(cands[k], w)
		lastSeg := b.segs[len(b.segs)-1]
		for end := lastSeg.Line + 1; end <= len(manLines); end++ {
			var man []byte
			for _, l := range manLines[:end] {
				man = append(append(man, l...), '\n')
			}
			w, err := WindowRecords(cmdline, r.Scenario.Template(), []StoreRead{
				{filepath.Join(storeDir, lastSeg.File), store[lastSeg.File]},
				{filepath.Join(storeDir, "manifest.jsonl"), man},
			})
			if err != nil {
				return nil, err
			}
			cands[k] = append(cands[k], w)
		}
	}
	// Try every combination (a handful).
	idx := make([]int, len(boots))
	for {
		j := &Join{}
		for k, b := range boots {
			n := 0
			for _, s := range b.segs {
				j.Records = append(j.Records, s.Recs...)
				n += len(s.Recs)
			}
			j.Parts = append(j.Parts, fmt.Sprintf("store boot %d: %d records", k+1, n))
			w := cands[k][idx[k]]
			var names []string
			for i := range w {
				names = append(names, Name(&w[i]))
			}
			j.Windows = append(j.Windows, names)
			if len(w) > 0 {
				j.Parts = append(j.Parts, fmt.Sprintf("window %d: %d reconstructed (%s)", k+1, len(w), strings.Join(names, ", ")))
			}
			j.Records = append(j.Records, w...)
			j.Boots = append(j.Boots, n+len(w))
		}
		j.Records = append(j.Records, finalStored...)
		j.Records = append(j.Records, live...)
		if len(finalStored) > 0 {
			j.Parts = append(j.Parts, fmt.Sprintf("store, deleted by the final kernel: %d records", len(finalStored)))
		}
		j.Parts = append(j.Parts, fmt.Sprintf("live: %d records", len(live)))
		j.Boots = append(j.Boots, len(finalStored)+len(live))
		ok, err := Matches(j.Records, pcrs)
		if err != nil {
			return nil, err
		}
		if ok {
			return j, nil
		}
		k := 0
		for ; k < len(idx); k++ {
			idx[k]++
			if idx[k] < len(cands[k]) {
				break
			}
			idx[k] = 0
		}
		if k == len(idx) {
			return nil, fmt.Errorf("no join of the store (%d boots), the window candidates and the live list (%d records) replays to PCR 10", len(boots), len(live))
		}
	}
}

// carriedJoin: a CONFIG_IMA_KEXEC kernel copied the old list (as it was at
// kexec_file_load on 6.1, at execute on 6.16+) into the new one. The records the old
// kernel had deleted (deleted, from the manifest: 7.2 drains) exist only in the store; the
// stored records it still held must be the live list's prefix (recognised, not doubled);
// what lies between them and the second boot_aggregate is the kexec window, which the
// kernel carried. Store records before the deletion point plus the live list must replay.
func carriedJoin(r *Run, old []Segment, deleted int, live []serialize.Record, pcrs serialize.PCRValues) (*Join, error) {
	var all []serialize.Record
	for _, s := range old {
		all = append(all, s.Recs...)
	}
	if deleted > len(all) {
		return nil, fmt.Errorf("the manifest says %d records of the old boot were deleted, the store has %d", deleted, len(all))
	}
	gone, stored := all[:deleted], all[deleted:]
	if len(stored) > len(live) {
		return nil, fmt.Errorf("store has %d records of the old boot, the live list only %d", len(stored), len(live))
	}
	for i := range stored {
		if !bytes.Equal(stored[i].Data, live[i].Data) || !bytes.Equal(stored[i].Digest, live[i].Digest) {
			return nil, fmt.Errorf("stored record %d (%s) is not live record %d (%s)", i, Name(&stored[i]), i, Name(&live[i]))
		}
	}
	second := -1
	for i := 1; i < len(live); i++ {
		if serialize.IsBootAggregate(&live[i], le) {
			second = i
			break
		}
	}
	if second < len(stored) {
		return nil, fmt.Errorf("no second boot_aggregate after the %d carried records", len(stored))
	}
	joined := append(append([]serialize.Record{}, gone...), live...)
	ok, err := Matches(joined, pcrs)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("the %d records the old kernel deleted plus the live list of the IMA_KEXEC kernel do not replay to PCR 10", len(gone))
	}
	var names []string
	for i := len(stored); i < second; i++ {
		names = append(names, Name(&live[i]))
	}
	parts := []string{fmt.Sprintf("carried by the kernel: %d records (= the %d stored, recognised, + %d window)", second, len(stored), second-len(stored)),
		fmt.Sprintf("live: %d records", len(live)-second)}
	if len(gone) > 0 {
		parts = append([]string{fmt.Sprintf("store, deleted by the old kernel: %d records", len(gone))}, parts...)
	}
	return &Join{
		Records: joined,
		Parts:   parts,
		Windows: [][]string{names},
		Boots:   []int{len(gone) + second, len(live) - second},
	}, nil
}

// deletedThrough is how many records of a boot's list the kernel deleted, from the
// manifest's "deleted" entries (a suspended kernel's refusal, marked carried, deletes
// nothing). 0 for kernels that never delete.
func deletedThrough(manLines [][]byte, bootID string) int {
	n := 0
	for _, l := range manLines {
		var e struct {
			Type    string `json:"type"`
			Deleted struct {
				BootID  string `json:"boot_id"`
				Through int    `json:"through"`
				Carried bool   `json:"carried"`
			} `json:"deleted"`
		}
		if json.Unmarshal(l, &e) != nil || e.Type != "deleted" || e.Deleted.BootID != bootID || e.Deleted.Carried {
			continue
		}
		n = max(n, e.Deleted.Through)
	}
	return n
}

// WriteBinary writes records as a SHA1 binary list.
func WriteBinary(name string, recs []serialize.Record) error {
	var b bytes.Buffer
	w := serialize.NewBinaryWriter(&b, le, serialize.SHA1, serialize.NewDigester())
	for i := range recs {
		if err := w.Write(&recs[i]); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return os.WriteFile(name, b.Bytes(), 0o644)
}

var evmctlEntry = regexp.MustCompile(`(sha1|sha256) PCR-10: succeed at entry (\d+)`)

// Evmctl runs evmctl ima_measurement on list against the PCR files and checks that the
// WHOLE list matches (evmctl 1.4 succeeds on a matching prefix; the entry it names must
// be the record count). It returns evmctl's output.
func Evmctl(dir string, list []byte, total int, pcrSHA1, pcrSHA256 []byte) (string, error) {
	lf, p1, p2 := filepath.Join(dir, "joined.bin"), filepath.Join(dir, "pcrs-sha1.txt"), filepath.Join(dir, "pcrs-sha256.txt")
	for _, f := range []struct {
		n string
		b []byte
	}{{lf, list}, {p1, pcrSHA1}, {p2, pcrSHA256}} {
		if err := os.WriteFile(f.n, f.b, 0o644); err != nil {
			return "", err
		}
	}
	out, err := runCombined("evmctl", "-v", "ima_measurement", "--ignore-violations", "--pcrs", "sha1,"+p1, "--pcrs", "sha256,"+p2, lf)
	if err != nil {
		return out, fmt.Errorf("evmctl ima_measurement: %w", err)
	}
	m := evmctlEntry.FindAllStringSubmatch(out, -1)
	if len(m) != 2 {
		return out, fmt.Errorf("evmctl: want a PCR-10 success line per bank, got %d", len(m))
	}
	for _, x := range m {
		if n, _ := strconv.Atoi(x[2]); n != total {
			return out, fmt.Errorf("evmctl: %s matches only a prefix: entry %d of %d", x[1], n, total)
		}
	}
	return out, nil
}
