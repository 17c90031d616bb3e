//go:build linux

package guestlib

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	m := ParseCmdline("console=ttyS0 quiet ima_template_fmt=d-ng|n-ng x=1 x=2\n")
	if m["console"] != "ttyS0" || m["ima_template_fmt"] != "d-ng|n-ng" || m["x"] != "2" {
		t.Errorf("ParseCmdline = %q", m)
	}
	if v, ok := m["quiet"]; !ok || v != "" {
		t.Errorf("bare word: %q, %v", v, ok)
	}
}

func TestReadPCRs(t *testing.T) {
	dir := t.TempDir()
	bank := filepath.Join(dir, "pcr-sha1")
	if err := os.MkdirAll(bank, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < NumPCRs; i++ {
		v := strings.Repeat("0", 40)
		if i == 10 {
			v = "AB" + strings.Repeat("0", 38) // sysfs prints upper case
		}
		if err := os.WriteFile(filepath.Join(bank, strconv.Itoa(i)), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pcrs, err := ReadPCRs(dir, "sha1")
	if err != nil {
		t.Fatal(err)
	}
	out := string(FormatPCRs(pcrs))
	if !strings.HasPrefix(out, "PCR-00: 0000") || !strings.Contains(out, "\nPCR-10: ab00") || strings.Count(out, "\n") != NumPCRs {
		t.Errorf("FormatPCRs =\n%s", out)
	}
	if _, err := ReadPCRs(dir, "sha256"); err == nil {
		t.Error("missing bank: no error")
	}
}
