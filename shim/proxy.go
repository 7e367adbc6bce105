package shim

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Commands of RFC 1928 section 4 that ReadProxyRequest serves.
const (
	CmdConnect      byte = cmdConnect // "CONNECT X'01'"
	CmdUDPAssociate byte = 0x03       // "UDP ASSOCIATE X'03'"
)

// ErrFragmented: a UDP request with a FRAG field other than X'00'.
var ErrFragmented = errors.New("fragmented SOCKS5 UDP datagram")

// ProxyRequest is an application's request to a SOCKS5 proxy, as
// ReadProxyRequest read it.
type ProxyRequest struct {
	Command byte // CmdConnect or CmdUDPAssociate
	// Dst is the CONNECT destination; for UDP ASSOCIATE "the address and
	// port that the client expects to use to send UDP datagrams on for the
	// association", all zeros when it does not know them.
	Dst Addr
	// Username is the RFC 1929 username when the proxy asked for one.
	Username string
}

// ReadProxyRequest reads an application's SOCKS5 request to a proxy that
// serves any destination (RFC 1928), replying to the method selection and
// the authentication but not to the request: the caller answers with
// ReplyBound once it knows the outcome.
//
// With check nil it accepts only "no authentication" (0x00); with check it
// accepts only "username/password" (0x02, RFC 1929) and answers status 0x00
// when check(user, pass) holds, 0x01 otherwise. It serves CONNECT and UDP
// ASSOCIATE, with ReadRequest's replies to what it refuses, its bound and
// its care to read nothing past the request.
func ReadProxyRequest(conn net.Conn, timeout time.Duration, check func(user, pass []byte) bool) (*ProxyRequest, error) {
	req := &ProxyRequest{}
	err := underDeadline(conn, timeout, func() error {
		if _, err := selectMethod(conn, check != nil, check == nil); err != nil {
			return err
		}
		if check != nil {
			err := readUserPass(conn, func(user, pass []byte) error {
				if !check(user, pass) {
					return errors.New("wrong username or password")
				}
				req.Username = string(user)
				return nil
			})
			if err != nil {
				return err
			}
		}
		var err error
		req.Command, req.Dst, err = readCommand(conn, func(cmd byte) bool { return cmd == CmdConnect || cmd == CmdUDPAssociate })
		return err
	})
	if err != nil {
		return nil, err
	}
	return req, nil
}

// ReplyBound answers a request with code (a Rep constant) and the address
// the proxy bound: for UDP ASSOCIATE, where the client sends its datagrams.
func ReplyBound(conn net.Conn, code byte, bnd Addr) error {
	b, err := AppendAddr([]byte{socksVersion, code, 0}, bnd)
	if err != nil {
		return fmt.Errorf("socks5 server: reply: %w", err)
	}
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("socks5 server: reply: %w", err)
	}
	return nil
}

// ParseUDPRequest parses a datagram an application sent to a UDP relay
// (RFC 1928 section 7): RSV (X'0000') | FRAG | ATYP | DST.ADDR | DST.PORT |
// DATA. "An implementation that does not support fragmentation MUST drop
// any datagram whose FRAG field is other than X'00'": such a datagram is
// ErrFragmented. data aliases b.
func ParseUDPRequest(b []byte) (dst Addr, data []byte, err error) {
	if len(b) < 3 {
		return Addr{}, nil, fmt.Errorf("%w: UDP request of %d bytes", ErrMalformed, len(b))
	}
	if b[0] != 0 || b[1] != 0 {
		return Addr{}, nil, fmt.Errorf("%w: UDP request's reserved bytes % x, want 00 00", ErrMalformed, b[:2])
	}
	if b[2] != 0 {
		return Addr{}, nil, fmt.Errorf("%w: FRAG 0x%02x", ErrFragmented, b[2])
	}
	dst, n, err := DecodeAddr(b[3:])
	if err != nil {
		return Addr{}, nil, err
	}
	return dst, b[3+n:], nil
}

// AppendUDPHeader appends the header of a datagram the relay sends to the
// application: RSV | FRAG (X'00') | ATYP | the datagram's source | port.
func AppendUDPHeader(b []byte, src Addr) ([]byte, error) {
	return AppendAddr(append(b, 0, 0, 0), src)
}
