package serialize

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ParsePCRFile reads PCR values in evmctl's `--pcrs` format ("PCR-10: <hex>", one per
// line; sysfs-style "PCR-10 <hex>" and "10: <hex>" are accepted too) for one bank.
func ParsePCRFile(r io.Reader, bank Bank, into PCRValues) error {
	s := bufio.NewScanner(r)
	ln := 0
	for s.Scan() {
		ln++
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			k, v, ok = strings.Cut(line, " ")
		}
		if !ok {
			return fmt.Errorf("line %d: %w: want \"PCR-NN: hex\"", ln, ErrFormat)
		}
		k = strings.TrimPrefix(strings.TrimSpace(k), "PCR-")
		p, err := strconv.ParseUint(k, 10, 32)
		if err != nil || p >= MaxPCR {
			return fmt.Errorf("line %d: %w: PCR index %q", ln, ErrFormat, k)
		}
		d, err := hex.DecodeString(strings.TrimSpace(v))
		if err != nil || len(d) != bank.Size {
			return fmt.Errorf("line %d: %w: PCR %d value is not %d hex bytes", ln, ErrFormat, p, bank.Size)
		}
		into.Set(uint32(p), bank.Name, d)
	}
	return s.Err()
}

// WritePCRFile writes the bank's values in evmctl's format: all 24 PCRs, zero where unknown
// (evmctl 1.4 wants every line).
func WritePCRFile(w io.Writer, bank Bank, v PCRValues) error {
	bw := bufio.NewWriter(w)
	for p := uint32(0); p < MaxPCR; p++ {
		d := v.Get(p, bank.Name)
		if d == nil {
			d = make([]byte, bank.Size)
		}
		fmt.Fprintf(bw, "PCR-%02d: %x\n", p, d)
	}
	return bw.Flush()
}
