package handover

import (
	"context"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// statusLockWait bounds how long status waits for a drain to release the store.
const statusLockWait = 10 * time.Second

// Status is what `imakexec status` reports. Every part is filled as far as it can be; the
// Err fields say why a part is missing.
type Status struct {
	Securityfs  string    `json:"securityfs"`
	IMADir      string    `json:"ima_dir,omitempty"`
	KernelErr   string    `json:"kernel_error,omitempty"`
	Release     string    `json:"kernel_release,omitempty"`
	BootID      string    `json:"boot_id,omitempty"`
	Backend     Backend   `json:"backend,omitempty"` // what auto would choose
	Backends    []Backend `json:"backends,omitempty"`
	Banks       []string  `json:"kernel_banks,omitempty"`
	Count       int64     `json:"runtime_measurements_count"`
	FlushHtable string    `json:"ima_flush_htable,omitempty"`
	// Holders are the processes with IMA files open: on 7.2 a reader that keeps one open
	// makes drains fail with EBUSY.
	Holders []IMAHolder `json:"ima_holders,omitempty"`

	TPM          string   `json:"tpm"`
	TPMErr       string   `json:"tpm_error,omitempty"`
	TPMBanks     []string `json:"tpm_banks,omitempty"`
	ResetCount   *uint32  `json:"reset_count,omitempty"`
	RestartCount *uint32  `json:"restart_count,omitempty"`

	Store StoreStatus `json:"store"`
}

// StoreStatus describes the store.
type StoreStatus struct {
	Dir       string    `json:"dir"`
	Err       string    `json:"error,omitempty"`
	Error     error     `json:"-"` // Err as an error (ErrTampered and friends)
	Exists    bool      `json:"exists"`
	Records   uint64    `json:"chain_records"`
	Segments  int       `json:"segments"`
	Bytes     int64     `json:"bytes"`
	LastDrain time.Time `json:"last_drain,omitzero"`
	Boots     int       `json:"generations"`
	// Retained is how many stored records of the running kernel it still held at the
	// last drain.
	Retained    uint64     `json:"retained"`
	FlushHtable string     `json:"ima_flush_htable,omitempty"` // as recorded at the last drain
	Binding     TPMBinding `json:"tpm_binding"`
	// BindingMatch is false when the store belongs to an earlier TPM power cycle: it is
	// archived (never joined) by the next drain.
	BindingMatch *bool    `json:"binding_match,omitempty"`
	BindingNote  string   `json:"binding_note,omitempty"`
	Archives     []string `json:"archives,omitempty"`
}

// GetStatus gathers the status of the kernel interfaces, the TPM (t may be nil; tpmErr says
// why) and the store. It changes nothing.
func GetStatus(p Paths, storeDir string, t transport.TPM, tpmName string, tpmErr error) *Status {
	return GetStatusContext(context.Background(), p, storeDir, t, tpmName, tpmErr)
}

// GetStatusContext is GetStatus that stops waiting for the store's lock when ctx is done.
func GetStatusContext(ctx context.Context, p Paths, storeDir string, t transport.TPM, tpmName string, tpmErr error) *Status {
	p = p.withDefaults()
	st := &Status{Securityfs: p.Securityfs, TPM: tpmName, Count: -1}
	ki, kerr := ReadKernelInfo(p)
	if kerr == nil {
		st.Release, st.BootID, st.FlushHtable = ki.Release, ki.BootID, ki.FlushHtable()
	}
	if k, err := ProbeKernel(p); err != nil {
		st.KernelErr = err.Error()
	} else {
		st.IMADir, st.Banks, st.Count = k.Dir, k.Banks, k.Count()
		st.Holders = IMAHolders(k.Dir)
		st.Backends = k.Backends(ki)
		st.Backend = st.Backends[0]
	}
	if tpmErr != nil {
		st.TPMErr = tpmErr.Error()
	} else if t != nil {
		if banks, err := ActiveBanks(t); err != nil {
			st.TPMErr = err.Error()
		} else {
			for _, b := range banks {
				st.TPMBanks = append(st.TPMBanks, b.Name)
			}
		}
		if r, rs, err := ReadClock(t); err != nil {
			st.TPMErr = err.Error()
		} else {
			st.ResetCount, st.RestartCount = &r, &rs
		}
	}
	st.Store.Dir = storeDir
	// The shared lock, so a drain under way is not seen half done; status waits for it a
	// little, then says who holds it.
	ctx, cancel := context.WithTimeout(ctx, statusLockWait)
	defer cancel()
	s := &Store{dir: storeDir}
	if err := s.RLock(ctx); err != nil {
		st.Store.Err, st.Store.Error = err.Error(), err
		return st
	}
	defer s.Unlock()
	st.Store.Archives = s.Archives()
	if !s.Exists() {
		return st
	}
	st.Store.Exists = true
	nsegs, last := s.segmentCount()
	st.Store.Records, st.Store.Segments, st.Store.Bytes = s.Records(), nsegs, s.Bytes()
	st.Store.LastDrain = s.LastDrain()
	st.Store.Binding = s.Header().TPM
	boots := s.Boots()
	st.Store.Boots = len(boots)
	for _, b := range boots {
		if b.BootID == st.BootID {
			st.Store.Retained = b.Retained
		}
	}
	if last != nil {
		st.Store.FlushHtable = last.FlushHtable
	}
	if st.ResetCount != nil {
		m := *st.ResetCount == st.Store.Binding.ResetCount
		st.Store.BindingMatch = &m
		if !m {
			st.Store.BindingNote = "the store belongs to an earlier TPM power cycle (cold boot since): the next drain archives it and starts a new chain; it is never joined"
		} else if st.RestartCount != nil && *st.RestartCount != st.Store.Binding.RestartCount {
			st.Store.BindingNote = "the TPM was restarted or resumed since the store was created (restartCount changed); replay against the TPM decides whether the PCRs survived"
		}
	}
	return st
}
