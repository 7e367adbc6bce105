package free

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// The policy advertisement (docs/free.md, "Policy advertisement"): at the
// start of a session the client opens one stream with the header
// VER | 0x80, and a bridge that advertises answers 01 00, then its whole
// policy (its operator's rules and the built-in ones), then closes the
// stream. An older bridge answers 01 07 (command not supported). With the
// policy in hand the client judges an IP destination itself: a denied one
// is refused at once (REP 0x02), an allowed one is granted at once, its
// header and first bytes sent without waiting for the bridge's reply
// (Keeper.Start).

// Limits of an advertisement, so that a reader's memory is bounded.
const (
	maxAdvertRules  = 4096
	maxAdvertRanges = 16384 // port ranges, over all the rules
)

// ErrAdvert: a policy advertisement that does not parse.
var ErrAdvert = errors.New("free: malformed policy advertisement")

// Rule flags in an advertisement.
const (
	advertDeny    = 0x01
	advertBuiltin = 0x02
)

// AppendAdvert appends the advertisement of p (nil: the built-in denials
// only) to b:
//
//	VER (0x01) | COUNT (2) | COUNT x RULE
//	RULE = FLAGS (1: 0x01 deny, 0x02 built-in) | ATYP (0x01 IPv4, 0x04 IPv6)
//	       | ADDR (4 or 16) | BITS (1) | NPORTS (2) | NPORTS x (LO (2) | HI (2))
//
// every integer big endian; a rule with no port ranges matches every port.
func AppendAdvert(b []byte, p *Policy) ([]byte, error) {
	var rules []Rule
	if p != nil {
		rules = append(rules, p.Rules...)
	}
	if p == nil || !p.complete {
		rules = append(rules, builtinDeny...)
	}
	ranges := 0
	for _, r := range rules {
		ranges += len(r.Ports)
	}
	if len(rules) > maxAdvertRules || ranges > maxAdvertRanges {
		return b, fmt.Errorf("free: a policy of %d rules and %d port ranges is too large to advertise (at most %d and %d)",
			len(rules), ranges, maxAdvertRules, maxAdvertRanges)
	}
	b = append(b, version)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rules)))
	for _, r := range rules {
		var flags byte
		if r.Deny {
			flags |= advertDeny
		}
		if r.builtin {
			flags |= advertBuiltin
		}
		ip := r.Prefix.Addr()
		atyp := byte(0x01)
		if ip.Is6() {
			atyp = 0x04
		}
		b = append(b, flags, atyp)
		b = append(b, ip.AsSlice()...)
		b = append(b, byte(r.Prefix.Bits()))
		b = binary.BigEndian.AppendUint16(b, uint16(len(r.Ports)))
		for _, pr := range r.Ports {
			b = binary.BigEndian.AppendUint16(b, pr.Lo)
			b = binary.BigEndian.AppendUint16(b, pr.Hi)
		}
	}
	return b, nil
}

// ReadAdvert reads a policy advertisement from r, exactly its bytes, and
// returns the Policy it describes, complete (built-in rules included, as
// the bridge sent them). It wraps ErrAdvert or ErrVersion.
func ReadAdvert(r io.Reader) (*Policy, error) {
	var hdr [3]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("free: read the policy advertisement: %w", noEOF(err))
	}
	if hdr[0] != version {
		return nil, fmt.Errorf("%w 0x%02x in the policy advertisement", ErrVersion, hdr[0])
	}
	n := int(binary.BigEndian.Uint16(hdr[1:]))
	if n > maxAdvertRules {
		return nil, fmt.Errorf("%w: %d rules, at most %d", ErrAdvert, n, maxAdvertRules)
	}
	p := &Policy{complete: true, Rules: make([]Rule, 0, n)}
	ranges := 0
	for i := 0; i < n; i++ {
		rule, err := readAdvertRule(r, &ranges)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i, err)
		}
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

// readAdvertRule reads one RULE; ranges counts the port ranges read so far.
func readAdvertRule(r io.Reader, ranges *int) (Rule, error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return Rule{}, noEOF(err)
	}
	flags, atyp := head[0], head[1]
	if flags&^(advertDeny|advertBuiltin) != 0 {
		return Rule{}, fmt.Errorf("%w: flags 0x%02x", ErrAdvert, flags)
	}
	var addr [16]byte
	var size int
	switch atyp {
	case 0x01:
		size = 4
	case 0x04:
		size = 16
	default:
		return Rule{}, fmt.Errorf("%w: address type 0x%02x", ErrAdvert, atyp)
	}
	// The address, BITS and NPORTS.
	buf := addr[:size]
	if _, err := io.ReadFull(r, buf); err != nil {
		return Rule{}, noEOF(err)
	}
	var tail [3]byte
	if _, err := io.ReadFull(r, tail[:]); err != nil {
		return Rule{}, noEOF(err)
	}
	ip, _ := netip.AddrFromSlice(buf)
	bits := int(tail[0])
	if bits > ip.BitLen() {
		return Rule{}, fmt.Errorf("%w: /%d of an IPv%d address", ErrAdvert, bits, map[int]int{32: 4, 128: 6}[ip.BitLen()])
	}
	prefix := netip.PrefixFrom(ip, bits)
	if prefix.Masked() != prefix {
		return Rule{}, fmt.Errorf("%w: %v has bits set past its length", ErrAdvert, prefix)
	}
	np := int(binary.BigEndian.Uint16(tail[1:]))
	if *ranges += np; *ranges > maxAdvertRanges {
		return Rule{}, fmt.Errorf("%w: more than %d port ranges", ErrAdvert, maxAdvertRanges)
	}
	rule := Rule{Prefix: prefix, Deny: flags&advertDeny != 0, builtin: flags&advertBuiltin != 0}
	for j := 0; j < np; j++ {
		var pr [4]byte
		if _, err := io.ReadFull(r, pr[:]); err != nil {
			return Rule{}, noEOF(err)
		}
		lo, hi := binary.BigEndian.Uint16(pr[:2]), binary.BigEndian.Uint16(pr[2:])
		if hi < lo {
			return Rule{}, fmt.Errorf("%w: port range %d-%d runs backwards", ErrAdvert, lo, hi)
		}
		rule.Ports = append(rule.Ports, PortRange{lo, hi})
	}
	rule.origin = advertOrigin(rule)
	return rule, nil
}

// advertOrigin names an advertised rule in the client's log.
func advertOrigin(r Rule) string {
	var b strings.Builder
	b.WriteString("the bridge's ")
	switch {
	case r.builtin:
		b.WriteString("default deny ")
	case r.Deny:
		b.WriteString("--deny ")
	default:
		b.WriteString("--allow ")
	}
	if len(r.Ports) == 0 {
		b.WriteString(r.Prefix.String())
		return b.String()
	}
	if r.Prefix.Addr().Is6() {
		b.WriteString("[" + r.Prefix.String() + "]")
	} else {
		b.WriteString(r.Prefix.String())
	}
	for i, p := range r.Ports {
		if i == 0 {
			b.WriteByte(':')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(int(p.Lo)))
		if p.Hi != p.Lo {
			b.WriteString("-" + strconv.Itoa(int(p.Hi)))
		}
	}
	return b.String()
}
