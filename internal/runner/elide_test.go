package runner

import "testing"

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
