package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// aLongTimeAgo is a deadline in the past: setting it unblocks every pending
// read and write at once.
var aLongTimeAgo = time.Unix(1, 0)

// DialSOCKS5 dials the SOCKS5 server at proxyAddr over TCP and asks it, with
// Handshake, to connect to target. It closes the connection on any failure.
func DialSOCKS5(ctx context.Context, proxyAddr, target string, user, pass []byte) (*net.TCPConn, error) {
	c, err := loopback.Dialer(proxyAddr).DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, fmt.Errorf("socks5: dial proxy: %w", err)
	}
	conn, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("socks5: dial proxy %s: got %T, not a TCP connection", proxyAddr, c)
	}
	if err := Handshake(ctx, conn, target, user, pass); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// Handshake asks the SOCKS5 server at the other end of conn to CONNECT to
// target ("ip:port", "[ipv6]:port" or "host:port").
//
// With no credentials (user and pass both empty) it offers only method 0x00;
// with credentials it offers only 0x02 and authenticates with user and pass
// as given (RFC 1929: each 1..255 bytes). This is what a goptlib server needs
// (PROTOCOLS.md A21): it prefers 0x02 whenever it is offered and then
// requires ULEN >= 1 and PLEN >= 1. Split PT arguments with
// metadata.SOCKS5Credentials, as tor does (A20).
//
// The messages go in lock-step, each after the previous reply: goptlib
// rejects a message followed by bytes it has not asked for yet. The reply's
// BND.ADDR is read fully whatever its type, and nothing past it.
//
// The exchange is bounded by ctx: its deadline becomes conn's deadline, and
// cancelling it unblocks the exchange at once. conn's deadline is cleared
// before Handshake returns. A non-zero REP is returned as a *ReplyError.
// Handshake does not close conn. Its errors do not repeat target, which
// the caller knows and names (chain.HopError).
func Handshake(ctx context.Context, conn net.Conn, target string, user, pass []byte) error {
	req, err := encodeRequest(target)
	if err != nil {
		return fmt.Errorf("socks5: %w", err)
	}
	_, err = request(ctx, conn, req, user, pass)
	return err
}

// AssociateUDP asks the SOCKS5 server at the other end of conn for a UDP
// association (RFC 1928 section 7) and returns the relay's address
// (BND.ADDR, BND.PORT), where the client sends its datagrams, each with
// the header of ParseUDPRequest. The association lasts as long as conn.
// Credentials, ctx and errors are as for Handshake.
func AssociateUDP(ctx context.Context, conn net.Conn, user, pass []byte) (Addr, error) {
	// "If the client is not in possession of the information at the time
	// of the UDP ASSOCIATE, the client MUST use a port number and address
	// of all zeros."
	req, _ := AppendAddr([]byte{socksVersion, CmdUDPAssociate, 0}, Addr{IP: netip.IPv4Unspecified()})
	return request(ctx, conn, req, user, pass)
}

// request runs the exchange of Handshake for the request req and returns
// the reply's bound address.
func request(ctx context.Context, conn net.Conn, req, user, pass []byte) (bnd Addr, err error) {
	auth := len(user) > 0 || len(pass) > 0
	if auth {
		// RFC 1929: "ULEN ... 1 to 255", "PLEN ... 1 to 255".
		if len(user) < 1 || len(user) > 255 || len(pass) < 1 || len(pass) > 255 {
			return Addr{}, fmt.Errorf("socks5: %w: username of %d bytes and password of %d bytes, each must be 1..255",
				ErrInvalidCredentials, len(user), len(pass))
		}
	}
	if err := ctx.Err(); err != nil {
		return Addr{}, fmt.Errorf("socks5: handshake not started: %w", err)
	}

	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return Addr{}, fmt.Errorf("socks5: set deadline: %w", err)
		}
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		conn.SetDeadline(aLongTimeAgo)
	})
	defer func() {
		if !stop() {
			// The cancellation ran (or is running): wait for it so that
			// clearing the deadline below is the last word.
			<-fired
			if err == nil {
				bnd, err = Addr{}, fmt.Errorf("socks5: handshake: %w", context.Cause(ctx))
			}
		}
		if cerr := conn.SetDeadline(time.Time{}); cerr != nil && err == nil {
			bnd, err = Addr{}, fmt.Errorf("socks5: clear deadline: %w", cerr)
		}
	}()

	bnd, err = handshake(conn, req, user, pass, auth)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return Addr{}, fmt.Errorf("socks5: handshake: %w: %w", context.Cause(ctx), err)
		}
		return Addr{}, fmt.Errorf("socks5: %w", err)
	}
	return bnd, nil
}

// handshake is the lock-step exchange; the caller handles deadlines.
func handshake(conn net.Conn, req []byte, user, pass []byte, auth bool) (Addr, error) {
	// RFC 1928 section 3: VER | NMETHODS | METHODS.
	method := byte(methodNone)
	if auth {
		method = methodUserPass
	}
	if _, err := conn.Write([]byte{socksVersion, 1, method}); err != nil {
		return Addr{}, fmt.Errorf("send method selection: %w", err)
	}
	var b [4]byte
	if _, err := io.ReadFull(conn, b[:2]); err != nil {
		return Addr{}, fmt.Errorf("read method selection reply: %w", err)
	}
	if b[0] != socksVersion {
		return Addr{}, fmt.Errorf("%w: method selection reply has version 0x%02x, want 0x05", ErrMalformed, b[0])
	}
	switch b[1] {
	case method:
	case methodNoAcceptable:
		// RFC 1928: "If the selected METHOD is X'FF', none of the methods
		// listed by the client are acceptable".
		return Addr{}, fmt.Errorf("%w: server refused method 0x%02x", ErrNoAcceptableMethods, method)
	default:
		return Addr{}, fmt.Errorf("%w: server selected method 0x%02x, but only 0x%02x was offered", ErrMalformed, b[1], method)
	}

	if auth {
		// RFC 1929 section 2: VER | ULEN | UNAME | PLEN | PASSWD.
		msg := make([]byte, 0, 3+len(user)+len(pass))
		msg = append(msg, userPassVersion, byte(len(user)))
		msg = append(msg, user...)
		msg = append(msg, byte(len(pass)))
		msg = append(msg, pass...)
		if _, err := conn.Write(msg); err != nil {
			return Addr{}, fmt.Errorf("send username/password: %w", err)
		}
		if _, err := io.ReadFull(conn, b[:2]); err != nil {
			return Addr{}, fmt.Errorf("read authentication reply: %w", err)
		}
		if b[0] != userPassVersion {
			return Addr{}, fmt.Errorf("%w: authentication reply has version 0x%02x, want 0x01", ErrMalformed, b[0])
		}
		// RFC 1929: "A STATUS field of X'00' indicates success."
		if b[1] != userPassSuccess {
			return Addr{}, fmt.Errorf("%w (status 0x%02x; a goptlib server says so when the arguments do not parse)", ErrAuthFailed, b[1])
		}
	}

	if _, err := conn.Write(req); err != nil {
		return Addr{}, fmt.Errorf("send CONNECT request: %w", err)
	}
	return readReply(conn)
}

// readReply reads RFC 1928 section 6's VER | REP | RSV | ATYP | BND.ADDR |
// BND.PORT, all of it and nothing more, and returns BND, or a *ReplyError
// for a non-zero REP.
func readReply(conn io.Reader) (Addr, error) {
	var b [4]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return Addr{}, fmt.Errorf("read CONNECT reply: %w", err)
	}
	if b[0] != socksVersion {
		return Addr{}, fmt.Errorf("%w: CONNECT reply has version 0x%02x, want 0x05", ErrMalformed, b[0])
	}
	if b[1] != RepSucceeded {
		// The connection is of no further use: what follows REP does not
		// matter.
		return Addr{}, &ReplyError{Code: b[1]}
	}
	if b[2] != 0 {
		return Addr{}, fmt.Errorf("%w: CONNECT reply has reserved byte 0x%02x, want 0x00", ErrMalformed, b[2])
	}
	// BND.ADDR and BND.PORT, whatever their type, are read (CONNECT's are
	// not used).
	if b[3] == atypDomain {
		// Any name will do, even an empty one: "the first octet of the
		// address field contains the number of octets of name that follow".
		if _, err := io.ReadFull(conn, b[:1]); err != nil {
			return Addr{}, fmt.Errorf("read CONNECT reply: %w", err)
		}
		if _, err := io.ReadFull(conn, make([]byte, int(b[0])+2)); err != nil {
			return Addr{}, fmt.Errorf("read CONNECT reply's bound address: %w", err)
		}
		return Addr{}, nil
	}
	bnd, err := readAddrAfter(conn, b[3])
	if err != nil {
		if errors.Is(err, ErrAddressNotSupported) {
			return Addr{}, fmt.Errorf("%w: CONNECT reply has address type 0x%02x", ErrMalformed, b[3])
		}
		return Addr{}, fmt.Errorf("read CONNECT reply's bound address: %w", err)
	}
	return bnd, nil
}

// encodeRequest builds the CONNECT request for target: VER | CMD | RSV |
// ATYP | DST.ADDR | DST.PORT (RFC 1928 section 4).
func encodeRequest(target string) ([]byte, error) {
	dst, err := ParseAddr(target)
	if err != nil {
		return nil, err
	}
	if dst.Port == 0 {
		return nil, fmt.Errorf("%w %q: port must be 1..65535", ErrInvalidTarget, target)
	}
	return AppendAddr([]byte{socksVersion, cmdConnect, 0}, dst)
}
