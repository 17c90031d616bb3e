package handover

import (
	"encoding/json"
	"testing"
)

// pcrsMap and mapPCRs let tests edit a manifest's raw PCR values as maps, as a forger would.
func pcrsMap(t testing.TB, raw json.RawMessage) map[string]map[string]string {
	t.Helper()
	var m map[string]map[string]string
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func mapPCRs(m map[string]map[string]string) json.RawMessage {
	b, _ := json.Marshal(m)
	return b
}
