//go:build linux

package guestlib

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Default kernel paths. IMA's files live in securityfs; the TPM's PCRs are
// readable in sysfs since Linux 5.12 (pcr-<bank>/<index>), which avoids a
// TPM client in the guest.
const (
	IMADir = "/sys/kernel/security/ima"
	TPMDir = "/sys/class/tpm/tpm0"
)

// NumPCRs is the number of PCRs of a PC Client TPM.
const NumPCRs = 24

// WritePolicy loads an IMA policy. Without CONFIG_IMA_WRITE_POLICY this works
// once per boot: the policy file disappears after the first write.
func WritePolicy(imaDir, policy string) error {
	if err := os.WriteFile(filepath.Join(imaDir, "policy"), []byte(policy), 0); err != nil {
		return fmt.Errorf("write ima policy: %w", err)
	}
	return nil
}

// ReadPCRs reads PCRs 0..23 of one bank ("sha1", "sha256") from sysfs.
func ReadPCRs(tpmDir, bank string) ([][]byte, error) {
	out := make([][]byte, NumPCRs)
	for i := range out {
		b, err := os.ReadFile(filepath.Join(tpmDir, "pcr-"+bank, strconv.Itoa(i)))
		if err != nil {
			return nil, fmt.Errorf("read pcr %s/%d: %w", bank, i, err)
		}
		v, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("read pcr %s/%d: %w", bank, i, err)
		}
		out[i] = v
	}
	return out, nil
}

// FormatPCRs renders PCR values in the format of evmctl's --pcrs file:
// "PCR-NN: <hex>" lines, PCR 0 first. evmctl 1.4 wants all 24 lines.
func FormatPCRs(pcrs [][]byte) []byte {
	var b bytes.Buffer
	for i, v := range pcrs {
		fmt.Fprintf(&b, "PCR-%02d: %x\n", i, v)
	}
	return b.Bytes()
}

// IMASnapshot is a consistent view of the IMA list and the PCRs: nothing was
// measured between reading the list and reading the PCRs.
type IMASnapshot struct {
	Binary     []byte // binary_runtime_measurements
	ASCII      []byte // ascii_runtime_measurements
	Count      []byte // runtime_measurements_count
	Violations []byte // violations
	// PCRs maps a bank name to its 24 PCR values.
	PCRs map[string][][]byte
}

// SnapshotIMA reads the IMA files from imaDir and the PCRs of banks from
// tpmDir. It retries if the measurement count moves while it reads (another
// process measuring something), so the list and the PCRs belong together.
func SnapshotIMA(imaDir, tpmDir string, banks ...string) (*IMASnapshot, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(imaDir, name))
		if err != nil {
			return nil, fmt.Errorf("snapshot ima: %w", err)
		}
		return b, nil
	}
	for try := 0; try < 5; try++ {
		s := &IMASnapshot{PCRs: map[string][][]byte{}}
		var err error
		if s.Count, err = read("runtime_measurements_count"); err != nil {
			return nil, err
		}
		if s.Binary, err = read("binary_runtime_measurements"); err != nil {
			return nil, err
		}
		if s.ASCII, err = read("ascii_runtime_measurements"); err != nil {
			return nil, err
		}
		if s.Violations, err = read("violations"); err != nil {
			return nil, err
		}
		for _, bank := range banks {
			if s.PCRs[bank], err = ReadPCRs(tpmDir, bank); err != nil {
				return nil, fmt.Errorf("snapshot ima: %w", err)
			}
		}
		after, err := read("runtime_measurements_count")
		if err != nil {
			return nil, err
		}
		if bytes.Equal(after, s.Count) {
			return s, nil
		}
	}
	return nil, fmt.Errorf("snapshot ima: measurement count keeps changing")
}

// SendSnapshot sends s as blobs named prefix+<file>: the four IMA files under
// their securityfs names (the count as "count") and "pcrs-<bank>.txt" in
// evmctl format.
func (g *Guest) SendSnapshot(prefix string, s *IMASnapshot) error {
	blobs := []struct {
		name string
		data []byte
	}{
		{"binary_runtime_measurements", s.Binary},
		{"ascii_runtime_measurements", s.ASCII},
		{"count", s.Count},
		{"violations", s.Violations},
	}
	for _, b := range blobs {
		if err := g.Blob(prefix+b.name, b.data); err != nil {
			return err
		}
	}
	for _, bank := range slices.Sorted(maps.Keys(s.PCRs)) {
		if err := g.Blob(prefix+"pcrs-"+bank+".txt", FormatPCRs(s.PCRs[bank])); err != nil {
			return err
		}
	}
	return nil
}

// TestPolicy is the IMA policy of the test guests: executions, reads by root and the
// kexec image and initramfs checks; nothing on the pseudo file systems (cgroup because Go
// >= 1.25 reads cgroup files for GOMAXPROCS). PolicyKexecCmdline adds the command line,
// PolicyKexecRecords the kexec_load and kexec_execute critical data (7.2 with
// CONFIG_IMA_KEXEC, ima_measure_kexec_event).
const (
	TestPolicy = `dont_measure fsmagic=0x9fa0
dont_measure fsmagic=0x62656572
dont_measure fsmagic=0x73636673
dont_measure fsmagic=0x64626720
dont_measure fsmagic=0x27e0eb
dont_measure fsmagic=0x63677270
measure func=BPRM_CHECK mask=MAY_EXEC
measure func=MMAP_CHECK mask=MAY_EXEC
measure func=FILE_CHECK mask=MAY_READ uid=0
measure func=KEXEC_KERNEL_CHECK
measure func=KEXEC_INITRAMFS_CHECK
`
	PolicyKexecCmdline = "measure func=KEXEC_CMDLINE\n"
	PolicyKexecRecords = "measure func=CRITICAL_DATA label=ima_kexec\n"
)
