#!/bin/bash
# check-testdata.sh: cross-check captured IMA lists against their PCRs with
# evmctl (ima-evm-utils), an oracle independent of our own replay code.
#
# Usage: scripts/check-testdata.sh [DIR]   (default serialize/testdata/vm)
#
# For every variant directory with a binary_runtime_measurements it runs
#   evmctl -v ima_measurement --ignore-violations \
#       --pcrs sha1,pcrs-sha1.txt --pcrs sha256,pcrs-sha256.txt binary_runtime_measurements
# plus --verify-sig --key signing-cert.der when the capture has the test
# certificate. For kexec round trips (before/ and after/) it checks before alone, after
# alone, and before+after concatenated against the after PCRs.
#
# evmctl 1.4 reports success as soon as ANY prefix of the list replays to the
# PCRs ("sha256 PCR-10: succeed at entry N"), to tolerate records appended
# after the PCRs were read. So a list with extra records still "matches".
# This script therefore also compares N with the number of records and
# reports such a result as "prefix N/TOTAL", which counts as no match.
#
# Each check has an expected outcome (below); the script exits 1 if any
# outcome differs.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/serialize/testdata/vm}
command -v evmctl >/dev/null || { echo "check-testdata: evmctl not found (apt-get install ima-evm-utils)" >&2; exit 1; }

# expect VARIANT CHECK -> match | nomatch
expect() {
	case "$1/$2" in
	ima-sha1-buf/list) echo nomatch ;;              # evmctl refuses "ima" mixed with other templates
	kexec-debian/after) echo nomatch ;;             # no CONFIG_IMA_KEXEC: the new list alone misses boot 1
	kexec-ima-kexec/before+after) echo nomatch ;;   # IMA_KEXEC carried boot 1: concatenating counts it twice
	*) echo match ;;
	esac
}

failed=0
check() { # check VARIANT CHECK LIST PCRDIR TOTAL
	local v=$1 c=$2 list=$3 pcrs=$4 total=$5 got detail out rc n
	local sig=()
	# With the capture's test certificate evmctl also checks the security.ima
	# signatures recorded in the list ("<file>: verification is OK").
	[ -f "$pcrs/../signing-cert.der" ] && sig=(--verify-sig --key "$pcrs/../signing-cert.der")
	[ -f "$pcrs/signing-cert.der" ] && sig=(--verify-sig --key "$pcrs/signing-cert.der")
	out=$(evmctl -v ima_measurement --ignore-violations "${sig[@]}" \
		--pcrs sha1,"$pcrs/pcrs-sha1.txt" --pcrs sha256,"$pcrs/pcrs-sha256.txt" "$list" 2>&1)
	rc=$?
	if [ $rc -ne 0 ]; then
		got=nomatch
		detail=$(echo "$out" | grep -v -e '^$' -e '^errno' | tail -n 1)
	else
		got=match
		detail="full $total/$total"
		for n in $(echo "$out" | sed -n 's/^.* PCR-10: succeed at entry \([0-9]*\)$/\1/p'); do
			if [ "$n" -ne "$total" ]; then got=nomatch; detail="prefix $n/$total"; fi
		done
	fi
	local nsig
	nsig=$(echo "$out" | grep -c ': verification is OK$')
	[ "$nsig" -gt 0 ] && detail="$detail; $nsig signature(s) verified"
	if echo "$out" | grep -q -i 'verification failed'; then got=nomatch; detail="$detail; signature verification failed"; fi
	local want verdict=ok
	want=$(expect "$v" "$c")
	[ "$got" = "$want" ] || { verdict=UNEXPECTED; failed=1; }
	printf '%-18s %-13s evmctl=%-8s expected=%-8s %-10s %s\n' "$v" "$c" "$got" "$want" "$verdict" "$detail"
}

count() { tr -dc 0-9 <"$1"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for d in "$dir"/*/; do
	v=$(basename "$d")
	if [ -f "$d/binary_runtime_measurements" ]; then
		check "$v" list "$d/binary_runtime_measurements" "$d" "$(count "$d/count")"
	fi
	if [ -d "$d/before" ] && [ -d "$d/after" ]; then
		b=$(count "$d/before/count") a=$(count "$d/after/count")
		check "$v" before "$d/before/binary_runtime_measurements" "$d/before" "$b"
		check "$v" after "$d/after/binary_runtime_measurements" "$d/after" "$a"
		cat "$d/before/binary_runtime_measurements" "$d/after/binary_runtime_measurements" >"$tmp/$v.bin"
		check "$v" before+after "$tmp/$v.bin" "$d/after" "$((b + a))"
	fi
done
exit $failed
