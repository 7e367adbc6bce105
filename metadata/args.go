package metadata

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

// Args maps a key to its values, in the order they were given. It is
// goptlib's own type, so values pass to and from goptlib unchanged.
type Args = pt.Args

// ErrTrailingEscape is returned when a string ends in an unpaired '\'.
var ErrTrailingEscape = errors.New("nothing follows the final escape '\\'")

// scanUnescaped reads s up to the first unescaped byte in stops, and returns
// the unescaped text and the index of that byte (len(s) when none).
func scanUnescaped(s string, stops string) (string, int, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if strings.IndexByte(stops, c) >= 0 {
			return b.String(), i, nil
		}
		if c == '\\' {
			i++
			if i == len(s) {
				return "", 0, ErrTrailingEscape
			}
			c = s[i]
		}
		b.WriteByte(c)
	}
	return b.String(), len(s), nil
}

// escape puts a '\' before every byte of s that is in set (set must hold '\').
func escape(s string, set string) string {
	if !strings.ContainsAny(s, set) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(set, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseKV parses "k=v<sep>k=v" with '\' escapes. An empty string is an empty,
// non-nil Args; an empty key, a missing '=' or a trailing '\' is an error.
func parseKV(s string, sep byte) (Args, error) {
	args := make(Args)
	if s == "" {
		return args, nil
	}
	for i := 0; ; {
		key, n, err := scanUnescaped(s[i:], "="+string(sep))
		if err != nil {
			return nil, err
		}
		begin := i
		i += n
		if i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("no '=' in %q", s[begin:i])
		}
		if key == "" {
			return nil, fmt.Errorf("empty key before '=' at byte %d", i)
		}
		i++ // the '='
		value, n, err := scanUnescaped(s[i:], string(sep))
		if err != nil {
			return nil, err
		}
		i += n
		args.Add(key, value)
		if i == len(s) {
			return args, nil
		}
		i++ // the separator
		if i == len(s) {
			return nil, fmt.Errorf("nothing follows the final %q", sep)
		}
	}
}

// encodeKV is the inverse of parseKV: sorted keys, values in order.
func encodeKV(args Args, sep byte, escSet string) string {
	keys := sortedKeys(args)
	var parts []string
	for _, k := range keys {
		for _, v := range args[k] {
			parts = append(parts, escape(k, escSet)+"="+escape(v, escSet))
		}
	}
	return strings.Join(parts, string(sep))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ParseClientArgs parses tor's per-connection argument string.
//
// pt-spec.txt 3.5: "the '<Key>=<Value>' formatted arguments MUST be escaped,
// such that all backslash, equal sign, and semicolon characters are escaped
// with a backslash." Tor itself escapes only ';' and '\', so a key ends at the
// first unescaped '=' and its value at the next unescaped ';'.
func ParseClientArgs(s string) (Args, error) {
	args, err := parseKV(s, ';')
	if err != nil {
		return nil, fmt.Errorf("client arguments: %w", err)
	}
	return args, nil
}

// EncodeClientArgs encodes args for a SOCKS request or a Bridge line,
// escaping '\', ';' and '='.
func EncodeClientArgs(args Args) string { return encodeKV(args, ';', `\;=`) }

// ParseSmethodArgs parses what follows "ARGS:" in an SMETHOD line.
//
// pt-spec.txt 3.3.3: "The ARGS are a comma-separated list of <key>=<value>
// pairs. Equal signs and commas [and backslashes] MUST be escaped with a
// backslash." An empty list (obfs4proxy prints "ARGS:" for obfs3) is an empty
// Args, never a bogus empty key.
func ParseSmethodArgs(s string) (Args, error) {
	args, err := parseKV(s, ',')
	if err != nil {
		return nil, fmt.Errorf("SMETHOD ARGS: %w", err)
	}
	return args, nil
}

// EncodeSmethodArgs encodes args for an SMETHOD line's ARGS: option.
func EncodeSmethodArgs(args Args) string { return encodeKV(args, ',', `\,=`) }

// ParseServerTransportOptions parses TOR_PT_SERVER_TRANSPORT_OPTIONS.
//
// pt-spec.txt 3.2.3: "a semicolon-separated list of <key>:<value> pairs,
// where <key> is a PT name and <value> is a k=v string value with options
// that are to be passed to the transport. Colons, semicolons, equal signs and
// backslashes MUST be escaped with a backslash."
func ParseServerTransportOptions(s string) (map[string]Args, error) {
	opts := make(map[string]Args)
	if s == "" {
		return opts, nil
	}
	for i := 0; ; {
		begin := i
		name, n, err := scanUnescaped(s[i:], ":;")
		if err != nil {
			return nil, fmt.Errorf("server transport options: %w", err)
		}
		i += n
		if i == len(s) || s[i] != ':' {
			return nil, fmt.Errorf("server transport options: no ':' in %q", s[begin:i])
		}
		if name == "" {
			return nil, fmt.Errorf("server transport options: empty transport name at byte %d", i)
		}
		i++
		key, n, err := scanUnescaped(s[i:], "=;")
		if err != nil {
			return nil, fmt.Errorf("server transport options: %w", err)
		}
		i += n
		if i == len(s) || s[i] != '=' {
			return nil, fmt.Errorf("server transport options: no '=' in %q", s[begin:i])
		}
		if key == "" {
			return nil, fmt.Errorf("server transport options: empty key for %q", name)
		}
		i++
		value, n, err := scanUnescaped(s[i:], ";")
		if err != nil {
			return nil, fmt.Errorf("server transport options: %w", err)
		}
		i += n
		if opts[name] == nil {
			opts[name] = make(Args)
		}
		opts[name].Add(key, value)
		if i == len(s) {
			return opts, nil
		}
		i++
		if i == len(s) {
			return nil, errors.New("server transport options: nothing follows the final ';'")
		}
	}
}

// EncodeServerTransportOptions is the inverse of ParseServerTransportOptions:
// transports sorted, then keys sorted, values in order.
func EncodeServerTransportOptions(opts map[string]Args) string {
	const set = `\:;=`
	var parts []string
	for _, name := range sortedKeys(opts) {
		args := opts[name]
		for _, k := range sortedKeys(args) {
			for _, v := range args[k] {
				parts = append(parts, escape(name, set)+":"+escape(k, set)+"="+escape(v, set))
			}
		}
	}
	return strings.Join(parts, ";")
}
