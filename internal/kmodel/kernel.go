// This file is long on purpose: it is the model's one kernel state (lists, counters, the
// staged list, suspension, the TPM extends) and every operation on it, each citing the 7.2
// kernel function it mirrors; the securityfs files, kexec and policy are in their own files.

package kmodel

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"strconv"
	"sync"
	"syscall"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/imakexec/imakexec/serialize"
)

// le is the byte order of the modelled kernels (x86_64, arm64 LE).
var le = binary.LittleEndian

// entry is one record in the list (struct ima_template_entry). Per-bank digests other than
// SHA1 are recomputed from the template data when a file shows them (the kernel stores
// them; both give the same bytes). The extended values are computed once, at measurement.
type entry struct {
	data []byte
	sha1 [serialize.SHA1Size]byte
	pcr  uint32
	tmpl string
	viol bool
}

func (e *entry) record() serialize.Record {
	return serialize.Record{PCR: e.pcr, Template: e.tmpl, Data: e.data, Digest: e.sha1[:]}
}

// kernelSize is the kexec size accounting of one record (get_binary_runtime_size, 7.2):
// 4 + 20 + 4 + strlen(template name) + 4 + data length. Custom templates have an empty
// name in the kernel (the list shows their format), so they are under-counted as there.
func (e *entry) kernelSize() int64 {
	name := e.tmpl
	if !builtinTemplate(name) {
		name = ""
	}
	return int64(4 + serialize.SHA1Size + 4 + len(name) + 4 + len(e.data))
}

// builtinNames are the names of builtin_templates (ima_template.c).
var builtinNames = []string{"ima", "ima-ng", "ima-sig", "ima-ngv2", "ima-sigv2", "ima-buf", "ima-modsig", "evm-sig"}

func builtinTemplate(name string) bool {
	for _, n := range builtinNames {
		if n == name {
			return true
		}
	}
	return false
}

// canonicalTemplate is the name a template looked up by name or format string gets
// (lookup_template_desc, 7.2): a format equal to a built-in template's, such as
// "d-ng|n-ng", is that template ("ima-ng"). Restore and policy template= look templates up
// this way; ima_template_fmt= does not (its descriptor keeps an empty name, and the list
// shows the format).
func canonicalTemplate(name string) string {
	for _, n := range builtinNames {
		if t, err := serialize.LookupTemplate(n); err == nil && (n == name || t.Format() == name) {
			return n
		}
	}
	return name
}

// htKey is a hash-table key: the PCR and the ima_hash template digest (digests longer than
// 32 bytes are keyed by their SHA-256, which keeps the map small and loses nothing in
// practice).
type htKey struct {
	pcr uint32
	d   [32]byte
}

// iintState is the per-inode cache (IMA_MEASURED, measured_pcrs) of one path.
type iintState struct {
	digest [64]byte
	pcrs   uint32
}

// Outcome says what a measurement request did.
type Outcome string

// Outcomes.
const (
	OutcomeMeasured    Outcome = "measured"     // listed and extended
	OutcomeDuplicate   Outcome = "duplicate"    // hash-table hit (-EEXIST): not listed, not extended
	OutcomeCached      Outcome = "cached"       // per-inode cache: unchanged file already measured into this PCR
	OutcomeNotMeasured Outcome = "not-measured" // the policy does not measure it
	OutcomeSuspended   Outcome = "suspended"    // measurement suspended at reboot (6.14+)
	OutcomeViolation   Outcome = "violation"    // a violation record listed and extended
	OutcomeTPMError    Outcome = "tpm-error"    // listed, but the extend failed
)

// Result describes one measurement request.
type Result struct {
	Outcome  Outcome `json:"outcome"`
	Name     string  `json:"name,omitempty"`
	PCR      uint32  `json:"pcr,omitempty"`
	Template string  `json:"template,omitempty"`
	// SHA1 is the record's SHA1 template digest (hex) when a record was listed.
	SHA1 string `json:"sha1,omitempty"`
	Err  string `json:"error,omitempty"`
}

// Kernel is one model kernel and the machine it runs on (TPM, kexec image). After a kexec
// or cold boot the same value models the next kernel.
type Kernel struct {
	mu     sync.Mutex // ima_extend_list_mutex and all model state
	cfg    Config
	feat   Features
	policy *Policy
	hash   serialize.Bank // ima_hash
	hashFn crypto.Hash

	tpm    *lockedTPM
	ownTPM bool
	banks  []serialize.Bank
	dg     *serialize.Digester
	ext    extender
	vals   [][]byte // extend values per bank, scratch
	viol   [][]byte // violation extend values per bank
	hkey   [64]byte

	cur       []entry
	staged    []entry
	htable    map[htKey]struct{}
	iint      map[string]iintState
	arena     []byte
	suspended bool

	numRecords  int64 // runtime_measurements_count before 7.2 (ima_htable.len)
	violations  int64
	fullCount   int64 // 7.2 FULL counters: records this kernel measured (not restored)
	fullSize    int64
	htableSize  int64 // binary_runtime_size of every record added (pre-7.2 kexec data)
	trimTotal   int64 // ima_trim_log T
	lastTrimmed int64

	image       *kexecImage
	segSize     int64 // kexec_segment_size: computed at the last kexec_file_load
	nextProfile Profile
	lastDump    []byte
	restoreErr  error
	restored    int
	boots       int
	generation  uint64
	bootID      string // /proc/sys/kernel/random/boot_id
	cmdline     string // /proc/cmdline

	users       int64 // ima_measure_users
	writer      int   // TID of the writer, 0 if none
	writerExtra int64

	synthetic int64
	closed    bool
}

// New boots a model kernel: it opens the TPM (the simulator unless cfg.TPM is set), runs
// the simulated firmware (PCRs 0-7) and starts IMA with a boot_aggregate.
func New(cfg Config) (*Kernel, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	pol, err := ParsePolicy(c.Policy)
	if err != nil {
		return nil, err
	}
	hb, err := serialize.ParseBank(c.Hash)
	if err != nil {
		return nil, err
	}
	if _, err := serialize.LookupTemplate(c.Template); err != nil {
		return nil, fmt.Errorf("template %q: %w", c.Template, err)
	}
	k := &Kernel{cfg: c, feat: c.Profile.Features(), policy: pol, hash: hb, dg: serialize.NewDigester(), cmdline: DefaultCmdline(c)}
	k.hashFn = map[string]crypto.Hash{"sha1": crypto.SHA1, "sha256": crypto.SHA256, "sha384": crypto.SHA384, "sha512": crypto.SHA512}[c.Hash]
	dev := c.TPM
	if dev == nil {
		dev, err = OpenSimulator()
		if err != nil {
			return nil, err
		}
		k.ownTPM = true
	}
	k.tpm = &lockedTPM{dev: dev}
	k.banks, err = TPMBanks(k.tpm)
	if err != nil {
		k.Close()
		return nil, err
	}
	for _, b := range k.banks {
		if !b.KernelHash() || b.Name == "sm3" {
			k.Close()
			return nil, fmt.Errorf("TPM bank %s: the model only handles sha1/sha256/sha384/sha512 banks", b.Name)
		}
		k.vals = append(k.vals, make([]byte, b.Size))
		v := bytes.Repeat([]byte{0xff}, b.Size)
		k.viol = append(k.viol, v)
	}
	if !c.NoFirmware {
		if err := k.firmware(); err != nil {
			k.Close()
			return nil, err
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.boot(nil); err != nil {
		k.mu.Unlock()
		k.Close()
		k.mu.Lock()
		return nil, err
	}
	return k, nil
}

// Close releases the TPM if the kernel opened it.
func (k *Kernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	if k.ownTPM {
		return k.tpm.dev.Close()
	}
	return nil
}

// TPM returns the machine's TPM, safe for concurrent use with the model.
func (k *Kernel) TPM() transport.TPM { return k.tpm }

// Banks returns the TPM's allocated banks, which the kernel extends.
func (k *Kernel) Banks() []serialize.Bank { return append([]serialize.Bank(nil), k.banks...) }

// Config returns the configuration in effect (defaults filled in, current profile).
func (k *Kernel) Config() Config {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cfg
}

// Profile returns the running kernel's profile.
func (k *Kernel) Profile() Profile {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.cfg.Profile
}

// Features returns the running kernel's behaviours.
func (k *Kernel) Features() Features {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.feat
}

// firmware extends PCRs 0-7 in every bank with fixed values, as platform firmware would,
// so that boot_aggregate is not a hash of reset values.
func (k *Kernel) firmware() error {
	for p := uint32(0); p < 8; p++ {
		for i, b := range k.banks {
			h := bankHash(b)
			w := h.New()
			fmt.Fprintf(w, "imakexec kmodel firmware PCR %d", p)
			copy(k.vals[i], w.Sum(nil))
		}
		if err := k.ext.extend(k.tpm, p, k.banks, k.vals); err != nil {
			return fmt.Errorf("firmware extend: %w", err)
		}
	}
	return nil
}

func bankHash(b serialize.Bank) crypto.Hash {
	switch b.Name {
	case "sha1":
		return crypto.SHA1
	case "sha256":
		return crypto.SHA256
	case "sha384":
		return crypto.SHA384
	default:
		return crypto.SHA512
	}
}

// boot starts IMA in a fresh kernel (ima_init, 7.2): restore the kexec buffer if any
// (ima_load_kexec_buffer), the boot_aggregate, then the kernel_info/kernel_version
// critical data where the policy measures it. Called with k.mu held.
func (k *Kernel) boot(kexecBuf []byte) error {
	k.cur, k.staged = nil, nil
	k.htable = map[htKey]struct{}{}
	k.iint = map[string]iintState{}
	k.arena = nil
	k.suspended = false
	k.numRecords, k.violations, k.fullCount, k.fullSize, k.htableSize = 0, 0, 0, 0, 0
	k.trimTotal, k.lastTrimmed = 0, 0
	k.image, k.segSize = nil, 0
	k.users, k.writer, k.writerExtra = 0, 0, 0
	k.generation++
	k.boots++
	k.restored, k.restoreErr = 0, nil
	k.bootID = newBootID()
	if err := k.writeProc(); err != nil {
		return err
	}
	if kexecBuf != nil {
		k.restored, k.restoreErr = k.restore(kexecBuf)
	}
	if err := k.bootAggregate(); err != nil {
		return err
	}
	_, err := k.policyBuffer(FuncCriticalData, "kernel_info", "kernel_version", []byte(k.feat.Release), 0)
	return err
}

// bootAggregate adds the boot_aggregate record (ima_add_boot_aggregate,
// ima_calc_boot_aggregate): the ima_hash bank if allocated, else sha256, else sha1; over
// PCRs 0-7, plus 8-9 for a non-SHA1 bank.
func (k *Kernel) bootAggregate() error {
	var bank *serialize.Bank
	for _, want := range []string{k.hash.Name, "sha256", "sha1"} {
		for i := range k.banks {
			if k.banks[i].Name == want && bank == nil {
				bank = &k.banks[i]
			}
		}
	}
	fv := fieldValues{name: "boot_aggregate", algo: k.hash.Name}
	if bank == nil {
		fv.digest = make([]byte, k.hash.Size)
	} else {
		n := uint32(8)
		if bank.Name != "sha1" {
			n = 10
		}
		pcrs := make([]uint32, n)
		for i := range pcrs {
			pcrs[i] = uint32(i)
		}
		v, err := ReadPCRs(k.tpm, []serialize.Bank{*bank}, pcrs)
		if err != nil {
			return fmt.Errorf("boot_aggregate: %w", err)
		}
		h := bankHash(*bank).New()
		for _, p := range pcrs {
			h.Write(v.Get(p, bank.Name))
		}
		fv.algo = bank.Name
		fv.digest = h.Sum(nil)
	}
	// The ima template's d field: SHA1 over PCRs 0-7 if there is a SHA1 bank, else zeros.
	fv.d20 = make([]byte, 20)
	for _, b := range k.banks {
		if b.Name == "sha1" {
			v, err := ReadPCRs(k.tpm, []serialize.Bank{b}, []uint32{0, 1, 2, 3, 4, 5, 6, 7})
			if err != nil {
				return err
			}
			h := sha1.New()
			for p := uint32(0); p < 8; p++ {
				h.Write(v.Get(p, "sha1"))
			}
			fv.d20 = h.Sum(nil)
		}
	}
	data, err := buildData(k.cfg.Template, fv)
	if err != nil {
		return err
	}
	_, err = k.add(entry{data: data, pcr: k.cfg.PCR, tmpl: k.cfg.Template}, "boot_aggregate")
	return err
}

// fieldValues are the inputs of a template's fields (ima_template_lib.c).
type fieldValues struct {
	algo   string // d-ng prefix: the digest's algorithm
	digest []byte // file or buffer digest (zeros for a violation)
	d20    []byte // the `d` field: SHA1 of the content, or zeros
	name   string
	buf    []byte
	file   bool
	uid    uint32
	gid    uint32
	mode   uint16
}

// buildData builds the template data for tmpl.
func buildData(tmpl string, v fieldValues) ([]byte, error) {
	t, err := serialize.LookupTemplate(tmpl)
	if err != nil {
		return nil, err
	}
	fields := make([]serialize.Field, len(t.Fields))
	for i, id := range t.Fields {
		f := serialize.Field{ID: id}
		switch id {
		case serialize.FieldD:
			f.Data = v.d20
		case serialize.FieldN:
			name := v.name
			if len(name) > serialize.MaxEventNameLen {
				if b := path.Base(name); v.file && len(b) <= serialize.MaxEventNameLen {
					name = b
				} else {
					name = name[:serialize.MaxEventNameLen]
				}
			}
			f.Data = []byte(name)
		case serialize.FieldDNG:
			f.Data = serialize.DigestField(v.algo, v.digest)
		case serialize.FieldDNGv2:
			f.Data = serialize.DigestField("ima:"+v.algo, v.digest)
		case serialize.FieldNNG:
			f.Data = serialize.NameField(v.name)
		case serialize.FieldBuf:
			f.Data = v.buf
		case serialize.FieldIUID:
			if v.file {
				f.Data = le.AppendUint32(nil, v.uid)
			}
		case serialize.FieldIGID:
			if v.file {
				f.Data = le.AppendUint32(nil, v.gid)
			}
		case serialize.FieldIMode:
			if v.file {
				f.Data = le.AppendUint16(nil, v.mode)
			}
		default:
			// sig, modsig, d-modsig, evmsig, xattr*: no signatures or xattrs in the model.
		}
		fields[i] = f
	}
	return serialize.BuildData(tmpl, fields, le)
}

// add appends a non-violation record and extends it (ima_add_template_entry): hash-table
// check, list add, then the extend, under k.mu (held by the caller).
func (k *Kernel) add(e entry, name string) (Result, error) {
	res := Result{Name: name, PCR: e.pcr, Template: e.tmpl}
	if k.suspended {
		res.Outcome = OutcomeSuspended
		return res, nil
	}
	rec := e.record()
	rec.Digest = nil
	for i := range k.banks {
		if err := k.dg.ExtendValue(k.vals[i], &rec, &k.banks[i]); err != nil {
			return res, err
		}
		if k.banks[i].Name == "sha1" {
			copy(e.sha1[:], k.vals[i])
		}
	}
	if !k.hasSHA1Bank() {
		d, err := k.dg.SHA1Digest(&rec)
		if err != nil {
			return res, err
		}
		e.sha1 = d
	}
	var key htKey
	if !k.cfg.DisableHTable {
		key = k.key(&rec, e.pcr)
		if _, ok := k.htable[key]; ok {
			res.Outcome = OutcomeDuplicate
			return res, nil
		}
	}
	k.append(e)
	k.fullCount++
	k.fullSize += e.kernelSize()
	if !k.cfg.DisableHTable {
		k.htable[key] = struct{}{}
	}
	res.SHA1 = fmt.Sprintf("%x", e.sha1)
	res.Outcome = OutcomeMeasured
	if err := k.ext.extend(k.tpm, e.pcr, k.banks, k.vals); err != nil {
		res.Outcome = OutcomeTPMError
		res.Err = err.Error()
	}
	return res, nil
}

func (k *Kernel) hasSHA1Bank() bool {
	for _, b := range k.banks {
		if b.Name == "sha1" {
			return true
		}
	}
	return false
}

// key computes the hash-table key: the ima_hash template digest and the PCR
// (ima_lookup_digest_entry).
func (k *Kernel) key(rec *serialize.Record, pcr uint32) htKey {
	var d []byte
	found := false
	for i, b := range k.banks {
		if b.Name == k.hash.Name {
			d, found = k.vals[i][:b.Size], true
		}
	}
	if !found {
		_ = k.dg.TemplateDigest(k.hkey[:], rec, &k.hash)
		d = k.hkey[:k.hash.Size]
	}
	key := htKey{pcr: pcr}
	if len(d) <= 32 {
		copy(key.d[:], d)
	} else {
		key.d = sha256.Sum256(d)
	}
	return key
}

// append adds e to the current list and the counters; data is copied into the arena.
func (k *Kernel) append(e entry) {
	if len(e.data) > 0 {
		if cap(k.arena)-len(k.arena) < len(e.data) {
			k.arena = make([]byte, 0, max(1<<20, len(e.data)))
		}
		n := len(k.arena)
		k.arena = append(k.arena, e.data...)
		e.data = k.arena[n:len(k.arena):len(k.arena)]
	}
	k.cur = append(k.cur, e)
	k.numRecords++
	k.htableSize += e.kernelSize()
}

// measure runs a file hook (process_measurement): policy, per-inode cache, record, add.
func (k *Kernel) measure(fn Func, mask uint32, uid uint32, name string, content []byte, mode uint16) (Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	res := Result{Name: name}
	if k.suspended {
		res.Outcome = OutcomeSuspended
		return res, nil
	}
	r := k.policy.match(event{fn: fn, mask: mask, uid: uid, fsmagic: k.fsMagicOf(name)})
	if r == nil || !r.Measure {
		res.Outcome = OutcomeNotMeasured
		return res, nil
	}
	pcr, tmpl := k.cfg.PCR, k.cfg.Template
	if r.PCR != 0 {
		pcr = r.PCR
	}
	if r.Template != "" {
		tmpl = r.Template
	}
	h := k.hashFn.New()
	h.Write(content)
	digest := h.Sum(nil)
	var st iintState
	copy(st.digest[:], digest)
	if old, ok := k.iint[name]; ok && old.digest == st.digest {
		if old.pcrs&(1<<pcr) != 0 {
			res.Outcome, res.PCR, res.Template = OutcomeCached, pcr, tmpl
			return res, nil
		}
		st.pcrs = old.pcrs
	}
	d20 := digest
	if k.hash.Name != "sha1" {
		s := sha1.Sum(content)
		d20 = s[:]
	}
	data, err := buildData(tmpl, fieldValues{algo: k.hash.Name, digest: digest, d20: d20, name: name, file: true, mode: mode})
	if err != nil {
		return res, err
	}
	res, err = k.add(entry{data: data, pcr: pcr, tmpl: tmpl}, name)
	if err == nil && (res.Outcome == OutcomeMeasured || res.Outcome == OutcomeDuplicate) {
		st.pcrs |= 1 << pcr
		k.iint[name] = st
	}
	return res, err
}

// Exec measures content as an executed file (BPRM_CHECK, mask MAY_EXEC, uid 0).
func (k *Kernel) Exec(path string, content []byte) (Result, error) {
	return k.measure(FuncBPRM, MayExec, 0, path, content, 0o100755)
}

// Read measures content as a file opened for reading by root (FILE_CHECK, MAY_READ).
func (k *Kernel) Read(path string, content []byte) (Result, error) {
	return k.ReadAs(0, path, content)
}

// ReadAs measures content as a file opened for reading by uid.
func (k *Kernel) ReadAs(uid uint32, path string, content []byte) (Result, error) {
	return k.measure(FuncFile, MayRead, uid, path, content, 0o100644)
}

// Buffer adds a buffer measurement (ima-buf unless the default template is changed by a
// rule; process_buffer_measurement) as if a hook whose policy measures it had called:
// it is subject to the hash table and suspension, not to the policy.
func (k *Kernel) Buffer(name string, buf []byte) (Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.buffer(name, buf, k.cfg.PCR, "ima-buf")
}

// buffer is called with k.mu held.
func (k *Kernel) buffer(name string, buf []byte, pcr uint32, tmpl string) (Result, error) {
	if k.suspended {
		return Result{Name: name, Outcome: OutcomeSuspended}, nil
	}
	h := k.hashFn.New()
	h.Write(buf)
	digest := h.Sum(nil)
	s := sha1.Sum(buf)
	data, err := buildData(tmpl, fieldValues{algo: k.hash.Name, digest: digest, d20: s[:], name: name, buf: buf})
	if err != nil {
		return Result{}, err
	}
	return k.add(entry{data: data, pcr: pcr, tmpl: tmpl}, name)
}

// policyBuffer measures a buffer if the policy says so for fn (and label);
// process_buffer_measurement. fsmagic is the file system of the hook's inode (the kernel
// file for KEXEC_CMDLINE), 0 for critical data, which has none.
func (k *Kernel) policyBuffer(fn Func, label, name string, buf []byte, fsmagic uint32) (Result, error) {
	if k.suspended {
		return Result{Name: name, Outcome: OutcomeSuspended}, nil
	}
	r := k.policy.match(event{fn: fn, label: label, fsmagic: fsmagic})
	if r == nil || !r.Measure {
		return Result{Name: name, Outcome: OutcomeNotMeasured}, nil
	}
	pcr, tmpl := k.cfg.PCR, "ima-buf"
	if r.PCR != 0 {
		pcr = r.PCR
	}
	if r.Template != "" {
		tmpl = r.Template
	}
	return k.buffer(name, buf, pcr, tmpl)
}

// Violation records a ToMToU violation for path (ima_add_violation): the counter
// goes up; a record with a zero digest field and zero template digests is listed in the
// configured PCR without a hash-table check and extended with 0xFF.
func (k *Kernel) Violation(path string) (Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.violations++
	res := Result{Name: path, PCR: k.cfg.PCR, Template: k.cfg.Template}
	if k.suspended {
		res.Outcome = OutcomeSuspended
		return res, nil
	}
	data, err := buildData(k.cfg.Template, fieldValues{algo: k.hash.Name, digest: make([]byte, k.hash.Size), d20: make([]byte, 20), name: path, file: true, mode: 0o100644})
	if err != nil {
		return res, err
	}
	e := entry{data: data, pcr: k.cfg.PCR, tmpl: k.cfg.Template, viol: true}
	k.append(e)
	k.fullCount++
	k.fullSize += e.kernelSize()
	res.Outcome = OutcomeViolation
	res.SHA1 = fmt.Sprintf("%x", make([]byte, 20))
	if err := k.ext.extend(k.tpm, k.cfg.PCR, k.banks, k.viol); err != nil {
		res.Outcome = OutcomeTPMError
		res.Err = err.Error()
	}
	return res, nil
}

// Synthetic measures n distinct synthetic files (FILE_CHECK by root), each listed and
// extended into the TPM with its own command; it returns how many were listed.
func (k *Kernel) Synthetic(n int) (int, error) {
	listed := 0
	var content [16]byte
	for i := 0; i < n; i++ {
		k.mu.Lock()
		k.synthetic++
		seq := k.synthetic
		gen := k.boots
		k.mu.Unlock()
		binary.LittleEndian.PutUint64(content[:], uint64(seq))
		binary.LittleEndian.PutUint64(content[8:], uint64(gen))
		res, err := k.measure(FuncFile, MayRead, 0, "/synthetic/"+strconv.FormatInt(seq, 10), content[:], 0o100644)
		if err != nil {
			return listed, err
		}
		if res.Outcome == OutcomeMeasured {
			listed++
		}
	}
	return listed, nil
}

// Counters are the securityfs counters.
type Counters struct {
	// RuntimeMeasurementsCount is runtime_measurements_count: before 7.2 every record added
	// since IMA started in this kernel, restored ones included; from 7.2 the current list.
	RuntimeMeasurementsCount int64 `json:"runtime_measurements_count"`
	Violations               int64 `json:"violations"`
	Current                  int   `json:"current"`
	Staged                   int   `json:"staged"`
	TrimTotal                int64 `json:"trim_total,omitempty"`
	Restored                 int   `json:"restored"`
}

// Counters returns the counters.
func (k *Kernel) Counters() Counters {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.counters()
}

func (k *Kernel) counters() Counters {
	c := Counters{RuntimeMeasurementsCount: k.numRecords, Violations: k.violations, Current: len(k.cur), Staged: len(k.staged), TrimTotal: k.trimTotal, Restored: k.restored}
	if k.feat.CountCurrent {
		c.RuntimeMeasurementsCount = int64(len(k.cur))
	}
	return c
}

// List returns copies of the current list's records (SHA1 digests in Record.Digest).
func (k *Kernel) List() []serialize.Record {
	k.mu.Lock()
	defer k.mu.Unlock()
	return records(k.cur)
}

// Staged returns copies of the staged records (7.2).
func (k *Kernel) Staged() []serialize.Record {
	k.mu.Lock()
	defer k.mu.Unlock()
	return records(k.staged)
}

func records(es []entry) []serialize.Record {
	out := make([]serialize.Record, len(es))
	for i := range es {
		r := es[i].record()
		out[i] = r.Clone()
	}
	return out
}

// Suspended reports whether measurement is suspended (reboot notifier ran, 6.14+).
func (k *Kernel) Suspended() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.suspended
}

// Boots counts kernels started on this machine (1 after New).
func (k *Kernel) Boots() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.boots
}

// PCRs reads the given PCRs of every bank from the TPM.
func (k *Kernel) PCRs(pcrs ...uint32) (serialize.PCRValues, error) {
	return ReadPCRs(k.tpm, k.banks, pcrs)
}

// Errors of the model's syscalls are syscall.Errno values, as the kernel returns them.
var (
	errEINVAL = syscall.EINVAL
)

// ErrNoImage: kexec execute without a loaded image.
var ErrNoImage = errors.New("no kexec image loaded")

var _ = sha512.Size
