package free

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one --allow or --deny: a prefix and, optionally, ports.
type Rule struct {
	Prefix netip.Prefix
	Ports  []PortRange // none: every port
	Deny   bool

	origin  string // how it was written, or why it is built in
	builtin bool
}

// PortRange is lo..hi, inclusive.
type PortRange struct{ Lo, Hi uint16 }

func (r Rule) String() string { return r.origin }

func (r Rule) matches(ip netip.Addr, port uint16) bool {
	if !r.Prefix.Contains(ip) {
		return false
	}
	if len(r.Ports) == 0 {
		return true
	}
	for _, p := range r.Ports {
		if p.Lo <= port && port <= p.Hi {
			return true
		}
	}
	return false
}

// builtinDeny are the destinations refused unless a rule allows them: the
// server's own host and networks, which a free transport must never open
// to its clients by default (the seed: a free server may restrict
// destinations). Each is as long as its range, so an --allow of a wider
// prefix (0.0.0.0/0) does not open them; an --allow of the range itself
// or a narrower one does.
var builtinDeny = func() []Rule {
	var rules []Rule
	for _, d := range []struct{ prefix, why string }{
		{"0.0.0.0/8", "this network (0.0.0.0 reaches the server itself)"},
		{"127.0.0.0/8", "loopback"},
		{"10.0.0.0/8", "private"},
		{"172.16.0.0/12", "private"},
		{"192.168.0.0/16", "private"},
		{"100.64.0.0/10", "shared address space (carrier-grade NAT)"},
		{"169.254.0.0/16", "link-local"},
		{"224.0.0.0/4", "multicast"},
		{"255.255.255.255/32", "broadcast"},
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"fc00::/7", "private (unique local)"},
		{"fe80::/10", "link-local"},
		{"ff00::/8", "multicast"},
	} {
		p := netip.MustParsePrefix(d.prefix)
		rules = append(rules, Rule{Prefix: p, Deny: true, origin: "default deny " + d.prefix + " (" + d.why + ")", builtin: true})
	}
	return rules
}()

// Policy says which destinations a free server dials. The zero Policy
// refuses the built-in ranges (this network, loopback, private, shared,
// link-local, multicast, broadcast) and allows the rest.
//
// A destination is judged by the rule that matches it most narrowly: the
// longest prefix; at equal length, a rule with ports before one without,
// a rule of the operator's before a built-in one, a deny before an allow.
// No rule matching: allowed. IPv4-mapped IPv6 addresses are judged as
// IPv4.
type Policy struct {
	Rules []Rule // the operator's, from ParseRule

	// complete: Rules hold the built-in ones too (a bridge's advertised
	// policy, ReadAdvert), which builtinDeny then does not add to.
	complete bool
}

// Decision is a Policy's verdict on one destination.
type Decision struct {
	Allowed bool
	Rule    string // the rule that decided, "" when none matched
}

// Check judges ip:port.
func (p *Policy) Check(ip netip.Addr, port uint16) Decision {
	ip = ip.Unmap().WithZone("")
	var best *Rule
	better := func(r *Rule) bool {
		if best == nil {
			return true
		}
		if a, b := r.Prefix.Bits(), best.Prefix.Bits(); a != b {
			return a > b
		}
		if a, b := len(r.Ports) > 0, len(best.Ports) > 0; a != b {
			return a
		}
		if a, b := !r.builtin, !best.builtin; a != b {
			return a
		}
		return r.Deny && !best.Deny
	}
	consider := func(rules []Rule) {
		for i := range rules {
			if r := &rules[i]; r.matches(ip, port) && better(r) {
				best = r
			}
		}
	}
	if p != nil {
		consider(p.Rules)
	}
	if p == nil || !p.complete {
		consider(builtinDeny)
	}
	if best == nil {
		return Decision{Allowed: true}
	}
	return Decision{Allowed: !best.Deny, Rule: best.origin}
}

// ParseRule parses an --allow (deny false) or --deny rule:
//
//	PREFIX            10.0.0.0/8, 2001:db8::/32, 192.0.2.7 (one address)
//	PREFIX:PORTS      10.0.0.0/8:80,443  127.0.0.1:8000-8100
//	[PREFIX]:PORTS    [2001:db8::/32]:443
//	:PORTS            every address (0.0.0.0/0 and ::/0), these ports
//
// PORTS is a comma-separated list of ports and ranges LO-HI.
func ParseRule(s string, deny bool) ([]Rule, error) {
	kind := "--allow"
	if deny {
		kind = "--deny"
	}
	fail := func(why string) ([]Rule, error) {
		return nil, fmt.Errorf("%s %q: %s (want PREFIX, PREFIX:PORTS, [IPV6PREFIX]:PORTS or :PORTS)", kind, s, why)
	}
	prefix, ports := s, ""
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.Index(s, "]")
		if end < 0 {
			return fail("no closing ']'")
		}
		prefix, ports = s[1:end], s[end+1:]
		if ports != "" {
			if !strings.HasPrefix(ports, ":") || ports == ":" {
				return fail("after ']' comes ':PORTS'")
			}
			ports = ports[1:]
		}
	case strings.Count(s, ":") > 1: // a bare IPv6 prefix
	default:
		if i := strings.LastIndex(s, ":"); i >= 0 {
			prefix, ports = s[:i], s[i+1:]
			if ports == "" {
				return fail("no ports after ':'")
			}
		}
	}
	r := Rule{Deny: deny, origin: kind + " " + s}
	if ports != "" {
		for _, part := range strings.Split(ports, ",") {
			pr, err := parsePorts(part)
			if err != nil {
				return fail(err.Error())
			}
			r.Ports = append(r.Ports, pr)
		}
	}
	if prefix == "" {
		if ports == "" {
			return fail("empty")
		}
		v4, v6 := r, r
		v4.Prefix = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		v6.Prefix = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		return []Rule{v4, v6}, nil
	}
	p, err := parsePrefix(prefix)
	if err != nil {
		return fail(err.Error())
	}
	r.Prefix = p
	return []Rule{r}, nil
}

// ParseRules parses --allow and --deny values into a Policy.
func ParseRules(allow, deny []string) (*Policy, error) {
	p := &Policy{}
	for _, list := range []struct {
		values []string
		deny   bool
	}{{allow, false}, {deny, true}} {
		for _, v := range list.values {
			rules, err := ParseRule(v, list.deny)
			if err != nil {
				return nil, err
			}
			p.Rules = append(p.Rules, rules...)
		}
	}
	return p, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is no IP address or prefix", s)
		}
		if ip.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q has a zone", s)
		}
		ip = ip.Unmap()
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is no prefix: %v", s, err)
	}
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped prefix shorter than /96", s)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func parsePorts(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return PortRange{}, fmt.Errorf("port %q is not 0..65535", lo)
	}
	b := a
	if isRange {
		if b, err = strconv.ParseUint(hi, 10, 16); err != nil {
			return PortRange{}, fmt.Errorf("port %q is not 0..65535", hi)
		}
		if b < a {
			return PortRange{}, fmt.Errorf("port range %q runs backwards", s)
		}
	}
	return PortRange{uint16(a), uint16(b)}, nil
}
