package metadata

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// hopPrefix reports whether key is "N.rest" with N a decimal hop number
// (no sign, no leading zero unless N is 0) and returns N and rest.
func hopPrefix(key string) (hop int, rest string, ok bool) {
	dot := strings.IndexByte(key, '.')
	if dot <= 0 {
		return 0, "", false
	}
	num := key[:dot]
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, "", false
		}
	}
	if len(num) > 1 && num[0] == '0' {
		return 0, "", false
	}
	n, err := strconv.Atoi(num)
	if err != nil { // more digits than an int holds
		return 0, "", false
	}
	return n, key[dot+1:], true
}

// SplitHops distributes a chain's arguments to its hops: a key "N.key" goes
// to hop N only (0 is the innermost), an unprefixed key to every hop. The
// result has one non-nil Args per hop. A key naming a hop the chain does not
// have, or "N." with nothing after the dot, is an error.
func SplitHops(args Args, hops int) ([]Args, error) {
	if hops < 1 {
		return nil, fmt.Errorf("a chain has at least one hop, not %d", hops)
	}
	out := make([]Args, hops)
	for i := range out {
		out[i] = make(Args)
	}
	for _, key := range sortedKeys(args) {
		hop, rest, ok := hopPrefix(key)
		if !ok {
			for i := range out {
				out[i][key] = append(out[i][key], args[key]...)
			}
			continue
		}
		if rest == "" {
			return nil, fmt.Errorf("argument %q names hop %d but no key", key, hop)
		}
		if hop >= hops {
			return nil, fmt.Errorf("argument %q names hop %d, but the chain has %d hop(s), numbered from 0", key, hop, hops)
		}
		out[hop][rest] = append(out[hop][rest], args[key]...)
	}
	return out, nil
}

// JoinHops is the inverse of SplitHops for hop-specific arguments: key k of
// hop i becomes "i.k". It is how the server publishes its hops' SMETHOD ARGS
// under one alias.
func JoinHops(perHop []Args) Args {
	out := make(Args)
	for i, args := range perHop {
		for k, vs := range args {
			key := strconv.Itoa(i) + "." + k
			out[key] = append(out[key], vs...)
		}
	}
	return out
}

// MaxSOCKSArgsLen is the longest encoded argument string that fits a SOCKS5
// username (255 bytes) and password (255 bytes); tor refuses Bridge lines
// whose arguments are longer.
const MaxSOCKSArgsLen = 2 * 255

// ErrArgsTooLong is returned when encoded arguments do not fit SOCKS5.
var ErrArgsTooLong = errors.New("encoded arguments are longer than the 510 bytes SOCKS5 username and password can carry")

// SOCKS5Credentials splits encoded client arguments into a SOCKS5 username
// and password exactly as tor does (connection.c): the username is the first
// min(len, 255) bytes; the password is the rest, or a single NUL byte when
// nothing is left. An empty string means no arguments: nil, nil, and the
// caller offers only the "no authentication" method.
func SOCKS5Credentials(encoded string) (user, pass []byte, err error) {
	if encoded == "" {
		return nil, nil, nil
	}
	if len(encoded) > MaxSOCKSArgsLen {
		return nil, nil, fmt.Errorf("%w (%d bytes)", ErrArgsTooLong, len(encoded))
	}
	if len(encoded) <= 255 {
		return []byte(encoded), []byte{0}, nil
	}
	return []byte(encoded[:255]), []byte(encoded[255:]), nil
}

// JoinSOCKS5Credentials is the inverse of SOCKS5Credentials, as goptlib's
// SOCKS server reads it: a password of a single NUL byte stands for none.
func JoinSOCKS5Credentials(user, pass []byte) string {
	if len(pass) == 1 && pass[0] == 0 {
		pass = nil
	}
	return string(user) + string(pass)
}
