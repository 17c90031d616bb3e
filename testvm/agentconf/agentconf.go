// Package agentconf is the configuration the host gives the end-to-end guest agent
// (testvm/guest/kexecagent) inside its initramfs. It is shared by both sides so the two
// cannot disagree on a field name.
package agentconf

import (
	"encoding/json"
	"fmt"
)

// Path is where the config lives in the guest image.
const Path = "/etc/testagent/config.json"

// Hook modes: how the imakexec boot hook is started in the guest.
const (
	// HookUinit: /init is the agent (in the role of u-root's init) and /bin/uinit is
	// imakexec; the agent runs the hook as a child, so it sees its verdict and exit code.
	HookUinit = "uinit"
	// HookInit: /init is imakexec itself (pid 1, `imakexec initramfs` without --init); it
	// execs /bin/agent afterwards (--next). The verdict is only on the console.
	HookInit = "init"
	// HookURoot: /init is the real u-root init (github.com/u-root/u-root/cmds/core/init),
	// /bin/uinit is imakexec (`imakexec initramfs --init`), and the hook execs /bin/agent
	// afterwards (--next). The verdict is only on the console.
	HookURoot = "uroot"
)

// Tamper modes: what the agent breaks in the unpacked handoff before the hook runs.
const (
	TamperNone    = ""
	TamperSegment = "segment" // flip one byte of the first carried segment
)

// Config is one generation's instructions. The agent writes the next generation's config
// (Generation+1) into the initramfs it hands to imakexec kexec.
type Config struct {
	Scenario   string `json:"scenario"`
	Generation int    `json:"generation"` // 1 = the cold-booted kernel
	Kexecs     int    `json:"kexecs"`     // kexecs in the whole run; generation Kexecs+1 is the last
	HookMode   string `json:"hook_mode"`
	Store      string `json:"store"`  // --store of hook, drain, kexec, verify
	Policy     string `json:"policy"` // IMA policy written once per boot after the hook
	Violations bool   `json:"violations"`
	// LoadOnly: `imakexec kexec --load-only`, then the agent snapshots the list (with the
	// kexec-window records) and calls reboot(KEXEC) itself.
	LoadOnly bool `json:"load_only"`
	// AfterLoad (with LoadOnly): files read between kexec_file_load and the jump, records
	// a 6.16+ kernel carries at execute and a 6.1 kernel loses.
	AfterLoad int `json:"after_load,omitempty"`
	// StageAtKexec (with LoadOnly, 7.2 staging): write "A" to the staged list right
	// before the jump, so records are staged and not deleted when the kernel dumps them.
	StageAtKexec bool   `json:"stage_at_kexec,omitempty"`
	Tamper       string `json:"tamper,omitempty"`
	// DryRun: run `imakexec kexec --dry-run --json` before the handover and send its plan
	// (blob kexec-plan.json).
	DryRun bool `json:"dry_run,omitempty"`
	// DrainFinal: drain in the last generation too (before verify).
	DrainFinal bool `json:"drain_final"`
	// ServeAgent: instead of the plain workload, run an agent-like reader of
	// `imakexec serve`'s view (testvm/guest/kexecagent/serve.go): it keeps its descriptor
	// while drains run, polls by entry number and replays each poll against the TPM.
	ServeAgent bool `json:"serve_agent,omitempty"`
}

// Last reports whether this generation does not kexec any more.
func (c *Config) Last() bool { return c.Generation > c.Kexecs }

// Prefix is the blob name prefix of this generation's data ("gen2/").
func (c *Config) Prefix() string { return fmt.Sprintf("gen%d/", c.Generation) }

// Next returns the config of the next generation.
func (c *Config) Next() *Config {
	n := *c
	n.Generation++
	return &n
}

// Parse reads a config.
func Parse(b []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if c.Generation < 1 || c.Store == "" || (c.HookMode != HookUinit && c.HookMode != HookInit && c.HookMode != HookURoot) {
		return nil, fmt.Errorf("agent config: incomplete: %s", b)
	}
	return &c, nil
}

// Marshal renders a config.
func (c *Config) Marshal() []byte {
	b, _ := json.MarshalIndent(c, "", "  ")
	return append(b, '\n')
}
