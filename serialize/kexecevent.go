package serialize

import (
	"strconv"
	"strings"
)

// KexecEvent is the payload of an ima_kexec critical-data record (ima_measure_kexec_event,
// security/integrity/ima/ima_kexec.c, 6.16+), measured by kexec_file_load once the segment
// is allocated ("kexec_load", ima_alloc_kexec_file_buf) and by the reboot notifier before
// the dump ("kexec_execute", ima_reboot_notifier):
// "kexec_segment_size=%lu;ima_binary_runtime_size=%lu;ima_runtime_measurements_count=%ld;".
// The size and the count are BINARY_FULL: every record since IMA init, the restored ones
// and the deleted ones included; the record does not count itself.
type KexecEvent struct {
	// Name is "kexec_load" or "kexec_execute".
	Name        string
	SegmentSize uint64
	RuntimeSize uint64
	Count       uint64
}

// ParseKexecEvent reads a kexec_load or kexec_execute record (a template with a buf field
// and that event name whose payload has kexec_segment_size); ok is false for any other.
func ParseKexecEvent(rec *Record, order ByteOrder) (ev KexecEvent, ok bool) {
	fields, err := ParseFields(rec, order)
	if err != nil {
		return ev, false
	}
	var buf []byte
	for _, f := range fields {
		switch f.ID {
		case FieldNNG, FieldN:
			ev.Name = strings.TrimRight(string(f.Data), "\x00")
		case FieldBuf:
			buf = f.Data
		}
	}
	if buf == nil || (ev.Name != "kexec_load" && ev.Name != "kexec_execute") {
		return ev, false
	}
	seen := 0
	for _, kv := range strings.Split(string(buf), ";") {
		k, v, found := strings.Cut(kv, "=")
		if !found {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return ev, false
		}
		switch k {
		case "kexec_segment_size":
			ev.SegmentSize, seen = n, seen|1
		case "ima_binary_runtime_size":
			ev.RuntimeSize, seen = n, seen|2
		case "ima_runtime_measurements_count":
			ev.Count, seen = n, seen|4
		}
	}
	return ev, seen&1 != 0
}
