package runner

import (
	"context"
	"log/slog"
	"net"
	"regexp"
)

// addrPattern finds IPv4 and bracketed IPv6 addresses with optional ports.
var addrPattern = regexp.MustCompile(`\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\[[0-9a-fA-F:.]+\](?::\d+)?`)

// ElideAddrs replaces every non-loopback IP address in s by "[scrubbed]",
// as tor does with SafeLogging (lyrebird's ElideAddr): a log must not name a
// user or a bridge unless the operator asks for it (--unsafe-logging).
// Loopback addresses are the combiner's own plumbing and stay.
func ElideAddrs(s string) string {
	return addrPattern.ReplaceAllStringFunc(s, func(a string) string {
		host := a
		if h, _, err := net.SplitHostPort(a); err == nil {
			host = h
		}
		if ip := net.ParseIP(trimBrackets(host)); ip != nil && ip.IsLoopback() {
			return a
		}
		return "[scrubbed]"
	})
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
