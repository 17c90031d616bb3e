package handover

import "github.com/imakexec/imakexec/serialize"

// sameTemplate reports whether two template names stand for the same template as the
// kernel sees it. A kernel restoring a carried list looks each template up by name or by
// format string (lookup_template_desc, ima_restore_measurement_list, 7.2), so a record
// listed under a custom ima_template_fmt equal to a built-in format ("d-ng|n-ng") comes
// back under the built-in name ("ima-ng"). The name is not hashed into the template digest
// of any template but "ima", which the kernel never restores, so the records are the same.
func sameTemplate(a, b string) bool {
	if a == b {
		return true
	}
	ta, errA := serialize.LookupTemplate(a)
	tb, errB := serialize.LookupTemplate(b)
	return errA == nil && errB == nil && a != serialize.TemplateIMA && b != serialize.TemplateIMA && ta.Format() == tb.Format()
}
