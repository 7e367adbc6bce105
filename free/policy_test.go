package free

import (
	"net/netip"
	"strings"
	"testing"
)

// The narrowest rule decides; the built-in denials hold unless a rule as
// narrow opens them.
func TestPolicy(t *testing.T) {
	for _, tc := range []struct {
		name        string
		allow, deny []string
		dest        string
		allowed     bool
		rule        string // part of the deciding rule; "" for none
	}{
		{"public", nil, nil, "192.0.2.1:80", true, ""},
		{"public IPv6", nil, nil, "[2001:db8::1]:443", true, ""},
		{"loopback", nil, nil, "127.0.0.1:80", false, "loopback"},
		{"loopback IPv6", nil, nil, "[::1]:80", false, "loopback"},
		{"IPv4-mapped loopback", nil, nil, "[::ffff:127.0.0.1]:80", false, "loopback"},
		{"this network", nil, nil, "0.0.0.0:80", false, "this network"},
		{"unspecified IPv6", nil, nil, "[::]:80", false, "unspecified"},
		{"10/8", nil, nil, "10.1.2.3:80", false, "private"},
		{"172.16/12", nil, nil, "172.31.0.1:80", false, "private"},
		{"172.32 is public", nil, nil, "172.32.0.1:80", true, ""},
		{"192.168/16", nil, nil, "192.168.1.1:80", false, "private"},
		{"ULA", nil, nil, "[fd00::1]:80", false, "unique local"},
		{"link-local", nil, nil, "169.254.169.254:80", false, "link-local"},
		{"link-local IPv6", nil, nil, "[fe80::1]:80", false, "link-local"},
		{"multicast", nil, nil, "224.0.0.251:5353", false, "multicast"},
		{"multicast IPv6", nil, nil, "[ff02::fb]:5353", false, "multicast"},
		{"broadcast", nil, nil, "255.255.255.255:67", false, "broadcast"},
		{"CGNAT", nil, nil, "100.64.0.1:80", false, "shared"},

		{"allow loopback", []string{"127.0.0.0/8"}, nil, "127.0.0.1:80", true, "--allow 127.0.0.0/8"},
		{"allow loopback, not 10/8", []string{"127.0.0.0/8"}, nil, "10.0.0.1:80", false, "private"},
		{"allow everything opens no private range", []string{"0.0.0.0/0"}, nil, "10.0.0.1:80", false, "private"},
		{"allow one port", []string{"127.0.0.1:8080"}, nil, "127.0.0.1:8080", true, "--allow"},
		{"allow one port, not another", []string{"127.0.0.1:8080"}, nil, "127.0.0.1:8081", false, "loopback"},
		{"allow a port range", []string{"10.0.0.0/8:1000-2000,443"}, nil, "10.9.9.9:1500", true, "--allow"},
		{"allow a port list", []string{"10.0.0.0/8:1000-2000,443"}, nil, "10.9.9.9:443", true, "--allow"},
		{"allow IPv6 with ports", []string{"[::1/128]:53"}, nil, "[::1]:53", true, "--allow"},
		{"allow bare IPv6", []string{"fd00::/8"}, nil, "[fd12::1]:1", true, "--allow"},
		{"allow IPv4-mapped prefix", []string{"::ffff:127.0.0.0/104"}, nil, "127.0.0.1:1", true, "--allow"},

		{"deny a public net", nil, []string{"192.0.2.0/24"}, "192.0.2.1:80", false, "--deny 192.0.2.0/24"},
		{"deny a port everywhere", nil, []string{":25"}, "192.0.2.1:25", false, "--deny :25"},
		{"deny a port everywhere, IPv6", nil, []string{":25"}, "[2001:db8::1]:25", false, "--deny :25"},
		{"deny a port, not others", nil, []string{":25"}, "192.0.2.1:26", true, ""},
		{"deny within an allow", []string{"127.0.0.0/8"}, []string{"127.0.0.1:22"}, "127.0.0.1:22", false, "--deny"},
		{"allow within a deny", []string{"192.0.2.7"}, []string{"192.0.2.0/24"}, "192.0.2.7:80", true, "--allow"},
		{"deny all, allow some", []string{"192.0.2.0/24:443"}, []string{"0.0.0.0/0", "::/0"}, "192.0.2.9:443", true, "--allow"},
		{"deny all, allow some: the rest", []string{"192.0.2.0/24:443"}, []string{"0.0.0.0/0", "::/0"}, "198.51.100.1:443", false, "--deny 0.0.0.0/0"},
		{"deny beats allow at a tie", []string{"192.0.2.0/24"}, []string{"192.0.2.0/24"}, "192.0.2.1:1", false, "--deny"},
		{"ports beat no ports at a tie", []string{"192.0.2.0/24:80"}, []string{"192.0.2.0/24"}, "192.0.2.1:80", true, "--allow"},
	} {
		p, err := ParseRules(tc.allow, tc.deny)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		ap := netip.MustParseAddrPort(tc.dest)
		d := p.Check(ap.Addr(), ap.Port())
		if d.Allowed != tc.allowed || !strings.Contains(d.Rule, tc.rule) || (tc.rule == "") != (d.Rule == "") {
			t.Errorf("%s: %s: allowed %v by %q; want %v by %q", tc.name, tc.dest, d.Allowed, d.Rule, tc.allowed, tc.rule)
		}
	}
	var none *Policy // the zero policy: built-in denials only
	if d := none.Check(netip.MustParseAddr("127.0.0.1"), 1); d.Allowed {
		t.Error("a nil policy allows loopback")
	}
}

func TestParseRuleBad(t *testing.T) {
	for _, bad := range []string{
		"", ":", "10.0.0.0/8:", "10.0.0.0/33", "nonsense", "example.com", "[::1", "[::1]80", "[::1]:",
		"10.0.0.0/8:http", "10.0.0.0/8:65536", "10.0.0.0/8:20-10", "10.0.0.0/8:1,", "fe80::1%eth0", "::ffff:0.0.0.0/90",
	} {
		if r, err := ParseRule(bad, false); err == nil {
			t.Errorf("ParseRule(%q) = %+v, want an error", bad, r)
		} else if !strings.Contains(err.Error(), "--allow") {
			t.Errorf("ParseRule(%q): %v does not name the flag", bad, err)
		}
	}
}
