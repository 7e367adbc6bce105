package chain

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"
)

// The PROXY protocol (haproxy's proxy-protocol.txt, versions 1 and 2) on
// the chains' public listeners, for a bridge behind a load balancer: a
// connection from a source that Config.ProxyProtocol trusts must start with
// a header whose source address is then the client's, reported to tor as
// USERADDR; one from any other source that starts with a header is
// refused, since its sender could name any client. The header is read
// exactly, never a byte past it, so the connection stays a *net.TCPConn
// that the copy loop splices; go-proxyproto parses it.
//
//	v1  "PROXY" SP ("TCP4" | "TCP6" | "UNKNOWN") ... CRLF, at most 107 bytes
//	v2  12-byte signature | ver_cmd | fam | len u16 BE | len bytes (addresses, TLVs)

// DefaultProxyHeaderTimeout bounds the read of a PROXY header (and, from a
// source not trusted to send one, the wait for the first bytes that tell
// whether it does).
const DefaultProxyHeaderTimeout = 5 * time.Second

// maxV1Header is v1's longest line: "the maximum line lengths the receiver
// must support including the CRLF are: ... unknown: 107 chars".
const maxV1Header = 107

// ParseProxyProtocol reads a list of trusted sources: CIDRs or single
// addresses, separated by commas or blanks.
func ParseProxyProtocol(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil || a.Zone() != "" {
				return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", f)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	if len(out) == 0 {
		return nil, errors.New("no CIDR given")
	}
	return out, nil
}

// trusted reports whether a is in one of the prefixes.
func trusted(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr returns the address of conn's client, as tor must learn it:
// its remote address, or, from a source trusted to send one, the source
// of its PROXY header. It closes conn and returns false when conn is
// refused. A connection closed before its first byte (a load balancer's
// health check) is logged at debug level only.
func (s *Server) clientAddr(conn *net.TCPConn, alias string) (string, bool) {
	remote := conn.RemoteAddr().String()
	prefixes := s.opt.Config.ProxyProtocol
	if len(prefixes) == 0 {
		return remote, true
	}
	from, err := netip.ParseAddrPort(remote)
	if err != nil {
		conn.Close()
		return "", false
	}
	conn.SetReadDeadline(time.Now().Add(s.opt.ProxyHeaderTimeout))
	defer conn.SetReadDeadline(time.Time{})
	refuse := func(level func(string, ...any), why string, err error) (string, bool) {
		level("refused a connection: "+why, "chain", alias, "from", remote, "err", err)
		conn.Close()
		return "", false
	}
	if !trusted(prefixes, from.Addr()) {
		found, err := sniffProxyHeader(conn)
		switch {
		case errors.Is(err, io.EOF):
			return refuse(s.log.Debug, "closed before its first byte", err)
		case errors.Is(err, os.ErrDeadlineExceeded):
			return remote, true // silent: the chain's outermost PT decides, as without --proxy-protocol
		case err != nil:
			return refuse(s.log.Debug, "reading its first bytes", err)
		case found:
			return refuse(s.log.Warn, "it sends a PROXY header, but its source is not one that --proxy-protocol trusts (if it is your load balancer, add its address)", nil)
		}
		return remote, true
	}
	h, n, err := readProxyHeader(conn)
	switch {
	case n == 0 && err != nil: // closed, reset or silent: nothing was said
		return refuse(s.log.Debug, "a trusted source ended or said nothing before a PROXY header: a health check", err)
	case err != nil:
		return refuse(s.log.Warn, "a source that --proxy-protocol trusts sent no valid PROXY header", err)
	}
	client, err := headerSource(h)
	if err != nil {
		return refuse(s.log.Warn, "its PROXY header names no usable client", err)
	}
	if !client.IsValid() {
		// proxy-protocol.txt 2.2: with LOCAL "the receiver must accept this
		// connection as valid and must use the real connection endpoints";
		// v1's UNKNOWN likewise. HAProxy's health checks send one and close:
		// such a connection ends here rather than in the chain's hops.
		if _, err := peek(conn, make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return refuse(s.log.Debug, "a PROXY header without a client (LOCAL or UNKNOWN), then the end: a health check", err)
		}
		return remote, true
	}
	return client.String(), true
}

// headerSource is h's client address; none (the zero AddrPort) for a LOCAL
// or UNKNOWN header, which names no client.
func headerSource(h *proxyproto.Header) (netip.AddrPort, error) {
	if h.Command.IsLocal() || h.TransportProtocol == proxyproto.UNSPEC {
		return netip.AddrPort{}, nil
	}
	if fam := h.TransportProtocol; !fam.IsStream() || !(fam.IsIPv4() || fam.IsIPv6()) {
		return netip.AddrPort{}, fmt.Errorf("address family and protocol 0x%02x is not TCP over IPv4 or IPv6", byte(h.TransportProtocol))
	}
	src, _, ok := h.TCPAddrs()
	if !ok {
		return netip.AddrPort{}, errors.New("no TCP source address")
	}
	ap := src.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if ap.Port() == 0 || ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("source %v is no client's", ap)
	}
	return ap, nil
}

// errNoProxyHeader: the first bytes are no PROXY signature.
var errNoProxyHeader = errors.New("no PROXY protocol signature")

// readProxyHeader reads one PROXY header from conn, exactly: after it, conn
// holds the client's first byte. n counts the bytes consumed.
func readProxyHeader(conn *net.TCPConn) (h *proxyproto.Header, n int, err error) {
	// Five bytes tell the versions apart: "PROXY", or "\r\n\r\n\x00".
	raw := make([]byte, 5, 16)
	n, err = io.ReadFull(conn, raw)
	if err != nil {
		return nil, n, err
	}
	switch {
	case bytes.Equal(raw, proxyproto.SIGV1):
		raw, err = readLine(conn, raw)
	case bytes.Equal(raw, proxyproto.SIGV2[:5]):
		raw = raw[:16]
		if _, err = io.ReadFull(conn, raw[5:]); err != nil {
			break
		}
		if !bytes.Equal(raw[:12], proxyproto.SIGV2) {
			return nil, len(raw), errNoProxyHeader
		}
		// "The 15th and 16th bytes is the address length in bytes in
		// network endian order."
		length := binary.BigEndian.Uint16(raw[14:16])
		if length > proxyproto.MaxV2HeaderSize {
			return nil, len(raw), fmt.Errorf("a v2 header of %d bytes, more than %d", length, proxyproto.MaxV2HeaderSize)
		}
		raw = append(raw, make([]byte, length)...)
		_, err = io.ReadFull(conn, raw[16:])
	default:
		return nil, n, errNoProxyHeader
	}
	if err != nil {
		return nil, len(raw), err
	}
	h, err = proxyproto.Read(bufio.NewReaderSize(bytes.NewReader(raw), len(raw)))
	return h, len(raw), err
}

// readLine reads the rest of a v1 header, up to its LF, into line: it
// peeks at what has arrived and consumes it up to the LF only.
func readLine(conn *net.TCPConn, line []byte) ([]byte, error) {
	buf := make([]byte, maxV1Header)
	for len(line) < maxV1Header {
		n, err := peek(conn, buf[:maxV1Header-len(line)])
		if err != nil {
			return line, err
		}
		chunk := buf[:n]
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			chunk = chunk[:i+1]
		}
		if _, err := io.ReadFull(conn, chunk); err != nil {
			return line, err
		}
		line = append(line, chunk...)
		if chunk[len(chunk)-1] == '\n' {
			return line, nil
		}
	}
	return line, proxyproto.ErrVersion1HeaderTooLong
}

// sniffProxyHeader reports whether conn starts with a PROXY signature,
// without consuming a byte. It waits for the client's first bytes; while
// they are a signature's first bytes and no more have arrived, it looks
// again shortly (rare: a client's first byte is 'P' or '\r' for a prober's
// or a PT's random bytes once in 128).
func sniffProxyHeader(conn *net.TCPConn) (bool, error) {
	buf := make([]byte, len(proxyproto.SIGV2))
	for {
		n, err := peek(conn, buf)
		if err != nil {
			return false, err
		}
		v1, v2 := prefixOf(buf[:n], proxyproto.SIGV1), prefixOf(buf[:n], proxyproto.SIGV2)
		switch {
		case v1 == signatureWhole || v2 == signatureWhole:
			return true, nil
		case v1 == signatureNot && v2 == signatureNot:
			return false, nil
		}
		time.Sleep(10 * time.Millisecond) // the read deadline ends this
	}
}

type signatureMatch int

const (
	signatureNot   signatureMatch = iota // b is no signature's beginning
	signatureStart                       // b is sig's beginning, shorter than sig
	signatureWhole                       // b starts with sig
)

func prefixOf(b, sig []byte) signatureMatch {
	switch {
	case bytes.HasPrefix(b, sig):
		return signatureWhole
	case bytes.HasPrefix(sig, b):
		return signatureStart
	}
	return signatureNot
}

// peek waits, under conn's read deadline, for bytes to read and copies up
// to len(b) of them without consuming them (recv(2) with MSG_PEEK).
func peek(conn *net.TCPConn, b []byte) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, rerr = unix.Recvfrom(int(fd), b, unix.MSG_PEEK)
			if rerr != unix.EINTR {
				return rerr != unix.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("recvfrom", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
