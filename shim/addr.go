package shim

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Addr is an address as RFC 1928 carries it (section 5, "Addressing"):
// ATYP | ADDR | PORT, where ATYP 0x01 is an IPv4 address (4 bytes), 0x04 an
// IPv6 address (16 bytes), and 0x03 a domain name ("The first octet of the
// address field contains the number of octets of name that follow, there
// is no terminating NUL octet"), then the port in network byte order.
//
// Exactly one of IP and Name is set. The zero Addr is not valid; IPv4
// 0.0.0.0 port 0 is AddrFrom(netip.AddrPortFrom(netip.IPv4Unspecified(), 0)).
type Addr struct {
	IP   netip.Addr // ATYP 0x01 or 0x04 (an IPv4-mapped IPv6 address is IPv6)
	Name string     // ATYP 0x03: 1..255 bytes of a host name
	Port uint16
}

// AddrFrom is the Addr of an IP address and port, less its zone.
func AddrFrom(ap netip.AddrPort) Addr {
	return Addr{IP: ap.Addr().WithZone(""), Port: ap.Port()}
}

// ParseAddr parses "ip:port", "[ipv6]:port" or "name:port". A name must be
// 1..255 bytes of a host name (letters, digits, '-', '.', '_'); an IPv6 zone
// cannot be carried.
func ParseAddr(hostport string) (Addr, error) {
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		return Addr{}, fmt.Errorf("%w %q: %w", ErrInvalidTarget, hostport, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("%w %q: port must be 0..65535", ErrInvalidTarget, hostport)
	}
	if ip, perr := netip.ParseAddr(host); perr == nil {
		if ip.Zone() != "" {
			return Addr{}, fmt.Errorf("%w %q: SOCKS5 cannot carry an IPv6 zone", ErrInvalidTarget, hostport)
		}
		return Addr{IP: ip, Port: uint16(port)}, nil
	}
	if len(host) < 1 || len(host) > 255 || !validHostName([]byte(host)) {
		return Addr{}, fmt.Errorf("%w %q: host name must be 1..255 bytes of letters, digits, '-', '.' and '_'", ErrInvalidTarget, hostport)
	}
	return Addr{Name: host, Port: uint16(port)}, nil
}

// String is "ip:port", "[ipv6]:port" or "name:port".
func (a Addr) String() string {
	host := a.Name
	if a.IP.IsValid() {
		host = a.IP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
}

// AddrPort is the IP address and port; ok is false for a name.
func (a Addr) AddrPort() (ap netip.AddrPort, ok bool) {
	if !a.IP.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.IP, a.Port), true
}

// Len is the length of a's encoding.
func (a Addr) Len() int {
	switch {
	case a.IP.Is4():
		return 1 + 4 + 2
	case a.IP.IsValid():
		return 1 + 16 + 2
	}
	return 1 + 1 + len(a.Name) + 2
}

// AppendAddr appends ATYP | ADDR | PORT for a to b.
func AppendAddr(b []byte, a Addr) ([]byte, error) {
	switch ip := a.IP; {
	case ip.Is4():
		v := ip.As4()
		b = append(append(b, atypIPv4), v[:]...)
	case ip.IsValid():
		if ip.Zone() != "" {
			return b, fmt.Errorf("%w %s: SOCKS5 cannot carry an IPv6 zone", ErrInvalidTarget, a)
		}
		v := ip.As16()
		b = append(append(b, atypIPv6), v[:]...)
	default:
		if len(a.Name) < 1 || len(a.Name) > 255 || !validHostName([]byte(a.Name)) {
			return b, fmt.Errorf("%w %q: host name must be 1..255 bytes of letters, digits, '-', '.' and '_'", ErrInvalidTarget, a.Name)
		}
		b = append(append(b, atypDomain, byte(len(a.Name))), a.Name...)
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// ReadAddr reads ATYP | ADDR | PORT from r, exactly those bytes. An unknown
// ATYP wraps ErrAddressNotSupported; a domain name of length 0 or with a
// byte no host name has wraps ErrMalformed (':', '[' or '%' would make the
// address ambiguous), and is refused before its port is read.
func ReadAddr(r io.Reader) (Addr, error) {
	var atyp [1]byte
	if _, err := io.ReadFull(r, atyp[:]); err != nil {
		return Addr{}, fmt.Errorf("read address type: %w", err)
	}
	return readAddrAfter(r, atyp[0])
}

// readAddrAfter is ReadAddr once ATYP has been read.
func readAddrAfter(r io.Reader, atyp byte) (Addr, error) {
	var b [1 + 1 + 255 + 2]byte // ATYP, LEN, the longest name, PORT
	b[0] = atyp
	n, err := addrLen(atyp, func() (byte, error) {
		if _, err := io.ReadFull(r, b[1:2]); err != nil {
			return 0, fmt.Errorf("read domain name length: %w", err)
		}
		return b[1], nil
	})
	if err != nil {
		return Addr{}, err
	}
	start := 1
	if atyp == atypDomain {
		start = 2
		if _, err := io.ReadFull(r, b[start:n-2]); err != nil {
			return Addr{}, fmt.Errorf("read domain name: %w", err)
		}
		if name := b[start : n-2]; !validHostName(name) {
			return Addr{}, fmt.Errorf("%w: domain name %q is not a host name (letters, digits, '-', '.', '_')", ErrMalformed, name)
		}
		start = n - 2
	}
	if _, err := io.ReadFull(r, b[start:n]); err != nil {
		return Addr{}, fmt.Errorf("read address: %w", err)
	}
	a, _, err := DecodeAddr(b[:n])
	return a, err
}

// DecodeAddr decodes ATYP | ADDR | PORT at the start of b and returns it
// with its length, with ReadAddr's errors; a b too short wraps
// ErrMalformed.
func DecodeAddr(b []byte) (Addr, int, error) {
	if len(b) < 1 {
		return Addr{}, 0, fmt.Errorf("%w: no address", ErrMalformed)
	}
	n, err := addrLen(b[0], func() (byte, error) {
		if len(b) < 2 {
			return 0, fmt.Errorf("%w: no domain name length", ErrMalformed)
		}
		return b[1], nil
	})
	if err != nil {
		return Addr{}, 0, err
	}
	if len(b) < n {
		return Addr{}, 0, fmt.Errorf("%w: address of %d bytes, %d given", ErrMalformed, n, len(b))
	}
	a := Addr{Port: binary.BigEndian.Uint16(b[n-2 : n])}
	switch b[0] {
	case atypIPv4:
		a.IP = netip.AddrFrom4([4]byte(b[1:5]))
	case atypIPv6:
		a.IP = netip.AddrFrom16([16]byte(b[1:17]))
	default:
		name := b[2 : n-2]
		if !validHostName(name) {
			return Addr{}, 0, fmt.Errorf("%w: domain name %q is not a host name (letters, digits, '-', '.', '_')", ErrMalformed, name)
		}
		a.Name = string(name)
	}
	return a, n, nil
}

// addrLen is the length of an encoded address of type atyp; nameLen gives
// a domain name's length octet.
func addrLen(atyp byte, nameLen func() (byte, error)) (int, error) {
	switch atyp {
	case atypIPv4:
		return 1 + 4 + 2, nil
	case atypIPv6:
		return 1 + 16 + 2, nil
	case atypDomain:
		l, err := nameLen()
		if err != nil {
			return 0, err
		}
		if l == 0 {
			return 0, fmt.Errorf("%w: domain name of length 0", ErrMalformed)
		}
		return 1 + 1 + int(l) + 2, nil
	}
	return 0, fmt.Errorf("%w: address type 0x%02x", ErrAddressNotSupported, atyp)
}
