package kmodel

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"

	"github.com/imakexec/imakexec/serialize"
)

// Func is an IMA hook (policy func=).
type Func string

// Hooks the model measures.
const (
	FuncBPRM          Func = "BPRM_CHECK"
	FuncFile          Func = "FILE_CHECK"
	FuncMmap          Func = "MMAP_CHECK"
	FuncKexecKernel   Func = "KEXEC_KERNEL_CHECK"
	FuncKexecInitrd   Func = "KEXEC_INITRAMFS_CHECK"
	FuncKexecCmdline  Func = "KEXEC_CMDLINE"
	FuncCriticalData  Func = "CRITICAL_DATA"
	FuncModule        Func = "MODULE_CHECK"
	FuncFirmware      Func = "FIRMWARE_CHECK"
	FuncPolicy        Func = "POLICY_CHECK"
	FuncKey           Func = "KEY_CHECK"
	FuncSetxattrCheck Func = "SETXATTR_CHECK"
)

var funcAliases = map[string]Func{
	"FILE_MMAP": FuncMmap, "PATH_CHECK": FuncFile, "MMAP_CHECK_REQPROT": FuncMmap,
}

// Access masks (policy mask=).
const (
	MayExec   = 0x1
	MayWrite  = 0x2
	MayRead   = 0x4
	MayAppend = 0x8
)

var maskNames = map[string]uint32{"MAY_EXEC": MayExec, "MAY_WRITE": MayWrite, "MAY_READ": MayRead, "MAY_APPEND": MayAppend}

// Rule is one measure or dont_measure policy rule. Other actions (appraise, audit, hash)
// are parsed and ignored: the model only measures.
type Rule struct {
	Measure  bool // measure (true) or dont_measure
	Func     Func // "" matches every hook
	Mask     uint32
	InMask   bool // mask=^MAY_X: any of the bits
	UID      *uint32
	PCR      uint32 // 0: CONFIG_IMA_MEASURE_PCR_IDX
	Template string
	Label    string // critical data label
	FSMagic  *uint32
}

// File-system magics (include/uapi/linux/magic.h) of the model's paths.
const (
	Ext4SuperMagic    = 0xef53
	ProcSuperMagic    = 0x9fa0
	SysfsMagic        = 0x62656572
	SecurityfsMagic   = 0x73636673
	TmpfsMagic        = 0x01021994
	Cgroup2SuperMagic = 0x63677270
)

// fsMagicOf is the file system a path of the model lives on: /proc, /sys (securityfs and
// cgroup2 below it), /dev, /tmp, /run and /dev/shm as a Linux system mounts them, every
// other path on the root file system (Config.RootFSMagic).
func (k *Kernel) fsMagicOf(p string) uint32 {
	under := func(dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	switch {
	case under("/proc"):
		return ProcSuperMagic
	case under("/sys/kernel/security"):
		return SecurityfsMagic
	case under("/sys/fs/cgroup"):
		return Cgroup2SuperMagic
	case under("/sys"):
		return SysfsMagic
	case under("/dev"), under("/tmp"), under("/run"):
		return TmpfsMagic
	}
	return k.cfg.RootFSMagic
}

// Policy is an ordered rule list; the first matching measure/dont_measure rule decides
// (ima_match_policy).
type Policy struct {
	Rules []Rule
}

// ParsePolicy parses the kernel's policy syntax (ima_parse_rule), a useful subset:
// measure/dont_measure with func=, mask=, fsmagic= (kstrtoul base 16), uid=, pcr=,
// template= (looked up by name or format, lookup_template_desc), label=. The other
// conditions (fsuuid=, LSM labels, ...) are accepted and not modelled. Comments (#) and blank lines are skipped; rules with other actions are
// ignored.
func ParsePolicy(text string) (*Policy, error) {
	p := &Policy{}
	s := bufio.NewScanner(strings.NewReader(text))
	ln := 0
	for s.Scan() {
		ln++
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		words := strings.Fields(line)
		var r Rule
		switch words[0] {
		case "measure":
			r.Measure = true
		case "dont_measure":
		case "appraise", "dont_appraise", "audit", "dont_audit", "hash", "dont_hash":
			continue
		default:
			return nil, fmt.Errorf("policy line %d: unknown action %q", ln, words[0])
		}
		for _, w := range words[1:] {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				return nil, fmt.Errorf("policy line %d: %q is not key=value", ln, w)
			}
			switch k {
			case "func":
				f := Func(v)
				if a, ok := funcAliases[v]; ok {
					f = a
				}
				switch f {
				case FuncBPRM, FuncFile, FuncMmap, FuncKexecKernel, FuncKexecInitrd, FuncKexecCmdline,
					FuncCriticalData, FuncModule, FuncFirmware, FuncPolicy, FuncKey, FuncSetxattrCheck:
				default:
					return nil, fmt.Errorf("policy line %d: unknown func %q", ln, v)
				}
				r.Func = f
			case "mask":
				if strings.HasPrefix(v, "^") {
					r.InMask = true
					v = v[1:]
				}
				m, ok := maskNames[v]
				if !ok {
					return nil, fmt.Errorf("policy line %d: unknown mask %q", ln, v)
				}
				r.Mask = m
			case "fsmagic":
				n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(v, "0x"), "0X"), 16, 32)
				if err != nil || r.FSMagic != nil {
					return nil, fmt.Errorf("policy line %d: bad fsmagic %q", ln, v)
				}
				m := uint32(n)
				r.FSMagic = &m
			case "fsuuid", "fsname", "obj_user", "obj_role", "obj_type", "subj_user", "subj_role", "subj_type", "appraise_type", "appraise_flag", "digest_type", "keyrings", "permit_directio":
				// accepted, not modelled
			case "uid", "euid", "fowner":
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil {
					return nil, fmt.Errorf("policy line %d: bad %s %q", ln, k, v)
				}
				u := uint32(n)
				r.UID = &u
			case "pcr":
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil || n >= serialize.MaxPCR {
					return nil, fmt.Errorf("policy line %d: bad pcr %q", ln, v)
				}
				r.PCR = uint32(n)
			case "template":
				if _, err := serialize.LookupTemplate(v); err != nil {
					return nil, fmt.Errorf("policy line %d: %w", ln, err)
				}
				r.Template = canonicalTemplate(v)
			case "label":
				r.Label = v
			default:
				return nil, fmt.Errorf("policy line %d: unknown option %q", ln, k)
			}
		}
		p.Rules = append(p.Rules, r)
	}
	return p, s.Err()
}

// event is what a hook asks the policy about.
type event struct {
	fn      Func
	mask    uint32
	uid     uint32
	label   string
	fsmagic uint32 // the inode's s_magic; 0 for a hook without an inode
}

// match returns the deciding rule, or nil when no rule matches (not measured). It follows
// ima_match_rules (7.2): KEY_CHECK and CRITICAL_DATA match only a rule with that very func=
// and then only its uid= and keyrings=/label= (ima_match_rule_data); other hooks check
// func=, mask=, fsmagic= and uid=.
func (p *Policy) match(e event) *Rule {
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.Func != "" && r.Func != e.fn {
			continue
		}
		if e.fn == FuncCriticalData || e.fn == FuncKey {
			if r.Func != e.fn || (r.UID != nil && *r.UID != e.uid) || (r.Label != "" && r.Label != e.label) {
				continue
			}
			return r
		}
		if r.FSMagic != nil && *r.FSMagic != e.fsmagic {
			continue
		}
		if r.Mask != 0 {
			if r.InMask && r.Mask&e.mask == 0 {
				continue
			}
			if !r.InMask && r.Mask != e.mask {
				continue
			}
		}
		if r.UID != nil && *r.UID != e.uid {
			continue
		}
		if r.Label != "" && r.Label != e.label {
			continue
		}
		return r
	}
	return nil
}
