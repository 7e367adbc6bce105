package runner

import (
	"strings"
	"testing"
)

// Unbracketed IPv6 addresses are scrubbed like the others; what only looks
// like one stays.
func TestElideAddrsIPv6(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"2001:db8::1", "[scrubbed]"},
		{"peer 2001:db8::1 failed", "peer [scrubbed] failed"},
		{"[2001:db8::1]:443", "[scrubbed]"},
		{"fe80::1%eth0", "[scrubbed]"},
		{"via [fe80::1%eth0]:443", "via [scrubbed]"},
		{"2001:db8:0:0:0:0:0:1 full", "[scrubbed] full"},
		{"mapped ::ffff:192.0.2.1", "mapped [scrubbed]"},
		{"to 2001:db8::1.", "to [scrubbed]."},
		{"dial 2001:db8::1: refused", "dial [scrubbed]: refused"},
		{"2001:db8::1,2001:db8::2", "[scrubbed],[scrubbed]"},
		{"(2001:DB8::A)", "([scrubbed])"},
		// Loopback is the combiner's own plumbing.
		{"::1", "::1"},
		{"shim ::1 and [::1]:9 and ::ffff:127.0.0.1", "shim ::1 and [::1]:9 and ::ffff:127.0.0.1"},
		// Not addresses.
		{"at 12:34:56 or 12:34:56.789", "at 12:34:56 or 12:34:56.789"},
		{"2026-01-02T12:34:56Z", "2026-01-02T12:34:56Z"},
		{"deadbeef cafe:babe face:b00c:1", "deadbeef cafe:babe face:b00c:1"},
		{"mac 00:1a:2b:3c:4d:5e", "mac 00:1a:2b:3c:4d:5e"},
		{"std::string, a :: b, key::", "std::string, a :: b, key::"},
		{"ratio 1:2:3", "ratio 1:2:3"},
		// Networks (policy rules) name no one; a host's prefix does.
		{"deny 10.0.0.0/8 (built-in)", "deny 10.0.0.0/8 (built-in)"},
		{"rules 192.168.0.0/16,fc00::/7, fe80::/10.", "rules 192.168.0.0/16,fc00::/7, fe80::/10."},
		{"deny 203.0.113.5/32 and 2001:db8::1/128", "deny [scrubbed]/32 and [scrubbed]/128"},
		{"path 203.0.113.5/index.html", "path [scrubbed]/index.html"},
		{"odd 203.0.113.5/99", "odd [scrubbed]/99"},
		{"host bits 203.0.113.5/8", "host bits [scrubbed]/8"},
		{"err: x: y", "err: x: y"},
		// IPv4 as before.
		{"client 192.0.2.7:443 and 127.0.0.1:80", "client [scrubbed] and 127.0.0.1:80"},
	} {
		if got := ElideAddrs(tt.in); got != tt.want {
			t.Errorf("ElideAddrs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzElideAddrs: any line (a child's stderr, an error from the network)
// comes out without a panic, scrubbing is idempotent, and a public host
// address put into the line is gone from it.
func FuzzElideAddrs(f *testing.F) {
	for _, s := range []string{"", "dial 203.0.113.5:443: refused", "[2001:db8::1]:443", "deny 10.0.0.0/8", "fe80::1%eth0",
		"12:34:56", "std::string", "203.0.113.5/32", "::ffff:127.0.0.1", "1.2.3.4/", "a::b::c", "[::1]:9/7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		once := ElideAddrs(s)
		if twice := ElideAddrs(once); twice != once {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, once, twice)
		}
		line := s + " peer 198.51.100.7:9001 gone"
		if out := ElideAddrs(line); strings.Contains(out, "198.51.100.7") {
			t.Fatalf("%q kept a public address: %q", line, out)
		}
	})
}
