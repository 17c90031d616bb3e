// Package kcmdline splits a Linux kernel command line the way the kernel does, so that
// every part of imakexec reads /proc/cmdline (and writes the command line it hands to
// kexec_file_load) by the same rules.
//
// The rules are those of next_arg (lib/cmdline.c, unchanged from 6.1 to 7.2) and
// parse_args (kernel/params.c):
//
//   - arguments are separated by runs of isspace() bytes (lib/ctype.c: HT, LF, VT, FF,
//     CR, space and 0xA0) outside double quotes;
//   - a double quote toggles quoting anywhere in an argument; the quote that opens an
//     argument, the one that opens its value (right after '='), and a closing quote at
//     the end of the argument are dropped, every other quote is kept;
//   - the key ends at the first '=' (an '=' in the first byte does not count: next_arg
//     then sees no value);
//   - "--" ends the kernel's parameters: what follows is for init (parse_args);
//   - keys compare with '-' and '_' equal (parameq, parameqn), as __setup() handlers
//     such as ima_hash= and ima_template= are matched (obsolete_checksetup, init/main.c).
package kcmdline

import "strings"

// Arg is one argument of a command line.
type Arg struct {
	Key      string // before the first '=', without an opening quote
	Value    string // after it, quotes dropped as next_arg drops them
	HasValue bool   // there was an '='
	Raw      string // the argument's bytes as they were on the line, quotes included
}

// isSpace is the kernel's isspace() (lib/ctype.c).
func isSpace(c byte) bool {
	return c == ' ' || (c >= '\t' && c <= '\r') || c == 0xa0
}

// Parse splits a command line into its arguments, "--" and what follows included.
func Parse(s string) []Arg {
	var out []Arg
	i := 0
	skip := func() {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
	}
	skip()
	for i < len(s) {
		start := i
		a := s[i:]
		quoted, inQuote := false, false
		j := 0
		if a[0] == '"' {
			quoted, inQuote = true, true
			j = 1
		}
		body := j // first byte of the parameter
		equals := -1
		for ; j < len(a); j++ {
			if isSpace(a[j]) && !inQuote {
				break
			}
			if equals < 0 && a[j] == '=' && j > body {
				equals = j
			}
			if a[j] == '"' {
				inQuote = !inQuote
			}
		}
		arg := Arg{Raw: s[start : start+j]}
		end := j // one past the argument's last byte
		trimEnd := func(x string) string {
			if strings.HasSuffix(x, `"`) {
				return x[:len(x)-1]
			}
			return x
		}
		if equals < 0 {
			arg.Key = a[body:end]
			if quoted && end > body && a[end-1] == '"' {
				arg.Key = a[body : end-1]
			}
		} else {
			arg.Key, arg.HasValue = a[body:equals], true
			v := a[equals+1 : end]
			if strings.HasPrefix(v, `"`) {
				v = trimEnd(v[1:])
			} else if quoted {
				v = trimEnd(v)
			}
			arg.Value = v
		}
		out = append(out, arg)
		i = start + j
		skip()
	}
	return out
}

// Params returns the kernel's parameters: the arguments before "--".
func Params(s string) []Arg {
	args := Parse(s)
	for i, a := range args {
		if !a.HasValue && a.Key == "--" {
			return args[:i]
		}
	}
	return args
}

// KeyEqual compares parameter names as parameq does ('-' and '_' are the same).
func KeyEqual(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == '-' {
			x = '_'
		}
		if y == '-' {
			y = '_'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Lookup returns the first kernel parameter named key: its value, whether it had one,
// and whether it is present at all. The first occurrence is the one that counts for
// ima_hash=, ima_template= and ima_template_fmt= (hash_setup and ima_template_setup
// ignore later ones through hash_setup_done / template_setup_done, 7.2).
func Lookup(s, key string) (value string, hasValue, ok bool) {
	for _, a := range Params(s) {
		if KeyEqual(a.Key, key) {
			return a.Value, a.HasValue, true
		}
	}
	return "", false, false
}

// Value returns the value of the first key=value kernel parameter, "" when there is none.
func Value(s, key string) string {
	v, _, _ := Lookup(s, key)
	return v
}

// Has reports whether a parameter named key is present (with or without a value).
func Has(s, key string) bool {
	_, _, ok := Lookup(s, key)
	return ok
}

// Values returns the values of every key=value argument named key, "--" and after
// included (the caller decides; imakexec's own parameter is looked for on the whole line,
// where the kernel would pass it on to init).
func Values(s, key string) []string {
	var out []string
	for _, a := range Parse(s) {
		if a.HasValue && KeyEqual(a.Key, key) {
			out = append(out, a.Value)
		}
	}
	return out
}

// Without returns the command line with every argument named key removed, the others
// kept byte for byte (quotes included) and joined by one space.
func Without(s, key string) string {
	var keep []string
	for _, a := range Parse(s) {
		if !KeyEqual(a.Key, key) {
			keep = append(keep, a.Raw)
		}
	}
	return strings.Join(keep, " ")
}
