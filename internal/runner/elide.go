package runner

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strings"
)

// addrPattern finds IPv4 addresses (group 1) and bracketed IPv6 addresses
// (group 2), with optional ports, and candidates for unbracketed IPv6
// addresses with an optional zone (group 3): runs of hex digits, dots and at
// least two colons, which ElideAddrs checks with netip (times such as
// 12:34:56 and MAC addresses are not addresses and stay).
var addrPattern = regexp.MustCompile(`(\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b)` +
	`|(\[[0-9a-fA-F:.]+(?:%[0-9A-Za-z_.-]+)?\](?::\d+)?)` +
	`|([0-9a-fA-F]*:[0-9a-fA-F.]*:[0-9a-fA-F:.]*(?:%[0-9A-Za-z_.-]+)?)`)

// ElideAddrs replaces every non-loopback IP address in s by "[scrubbed]",
// as tor does with SafeLogging (lyrebird's ElideAddr): a log must not name a
// user or a bridge unless the operator asks for it (--unsafe-logging).
// Loopback addresses are the combiner's own plumbing and stay.
func ElideAddrs(s string) string {
	var b strings.Builder
	last := 0
	for _, m := range addrPattern.FindAllStringSubmatchIndex(s, -1) {
		start, end, scrub := m[0], m[1], false
		if m[6] >= 0 {
			end, scrub = bareIPv6(s, start, end)
		} else {
			scrub = !isLoopback(s[start:end])
		}
		if scrub && isNetwork(s, start, end) {
			scrub = false
		}
		if scrub {
			b.WriteString(s[last:start])
			b.WriteString("[scrubbed]")
			last = end
		}
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// isNetwork reports an address s[start:end] followed by a prefix length
// shorter than a host's, with no host bits set ("10.0.0.0/8", "fc00::/7"): a network, as the
// policy rules of --allow and --deny and the built-in denials name them,
// which names no user and no bridge. A host's prefix (/32, /128) is an
// address like any other.
func isNetwork(s string, start, end int) bool {
	rest, ok := strings.CutPrefix(s[end:], "/")
	if !ok {
		return false
	}
	n := 0
	for n < len(rest) && n < 3 && '0' <= rest[n] && rest[n] <= '9' {
		n++
	}
	if n == 0 || n < len(rest) && isWordByte(rest[n]) {
		return false
	}
	p, err := netip.ParsePrefix(trimBrackets(s[start:end]) + "/" + rest[:n])
	return err == nil && p.Bits() < p.Addr().BitLen() && p.Masked() == p // 203.0.113.5/8 still names a host
}

// isLoopback reports an "ip", "ip:port" or "[ip]:port" that names loopback.
func isLoopback(a string) bool {
	host := a
	if h, _, err := net.SplitHostPort(a); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(trimBrackets(host))
	return err == nil && ip.IsLoopback()
}

// bareIPv6 checks s[start:end], a candidate for an unbracketed IPv6
// address: it is one when it stands alone (not inside a word, as in
// std::string), holds a hex digit (a lone "::" is punctuation), and parses,
// less a trailing '.' or ':' of the sentence around it. It returns the
// address's end and whether to scrub it (false for loopback).
func bareIPv6(s string, start, end int) (int, bool) {
	if start > 0 && isWordByte(s[start-1]) || end < len(s) && isWordByte(s[end]) {
		return end, false
	}
	for ; end > start; end-- {
		a := s[start:end]
		if ip, err := netip.ParseAddr(a); err == nil {
			return end, ip.Is6() && strings.ContainsAny(a, "0123456789abcdefABCDEF") && !ip.IsLoopback()
		}
		if c := s[end-1]; c != '.' && c != ':' {
			break
		}
	}
	return end, false
}

func isWordByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

func trimBrackets(s string) string {
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

// elideHandler applies ElideAddrs to messages and string attributes.
type elideHandler struct{ next slog.Handler }

func (h elideHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h elideHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, ElideAddrs(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(elideAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func elideAttr(a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		return slog.String(a.Key, ElideAddrs(a.Value.String()))
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			return slog.String(a.Key, ElideAddrs(err.Error()))
		}
		return slog.String(a.Key, ElideAddrs(a.Value.String()))
	}
	return a
}

func (h elideHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = elideAttr(a)
	}
	return elideHandler{h.next.WithAttrs(out)}
}

func (h elideHandler) WithGroup(name string) slog.Handler {
	return elideHandler{h.next.WithGroup(name)}
}
