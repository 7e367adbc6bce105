// Package extorport owns the Extended ORPort protocol (ext-orport-spec) on
// both sides, as ptcombiner needs it: the cookie file, the SAFE_COOKIE
// authentication, and the command frames.
//
//   - The server side (ServerHandshake, then Okay or Deny) is what the
//     combiner's server runs on loopback for its server PT children, which are
//     goptlib programs calling pt.DialOr: they report USERADDR (the remote
//     address of the connection they accepted) and TRANSPORT (their method
//     name), send DONE, and wait for exactly one reply frame.
//   - The client side (ClientHandshake, Dial) is what the combiner speaks to
//     tor's own Extended ORPort, reporting the real client address and the
//     chain alias.
//
// Encodings, all integers big-endian:
//
//	cookie file  "! Extended ORPort Auth Cookie !\x0a" (32 bytes) | cookie (32 bytes)
//	auth         server: AuthTypes... 0x00; client: AuthType; client: ClientNonce (32);
//	             server: ServerHash (32) | ServerNonce (32); client: ClientHash (32);
//	             server: AuthStatus (1 byte, 1 = success)
//	frame        CMD u16 | BODYLEN u16 | BODY (BODYLEN bytes)
//
// Neither side reads a byte past the end of the handshake (no buffering), so
// whatever the peer sends after OKAY is left in the connection for the caller.
// Every handshake runs under a deadline that is cleared on success; on failure
// the connection is left as is and closing it is the caller's job (Dial closes
// what it dialled).
package extorport

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Frame commands. ext-orport-spec 3.1.1: "Commands sent from the transport
// proxy to the bridge are: [0x0000] DONE ... [0x0001] USERADDR ... [0x0002]
// TRANSPORT"; "Replies sent from tor to the proxy are: [0x1000] OKAY ...
// [0x1001] DENY ... [0x1002] CONTROL".
const (
	CmdDone      uint16 = 0x0000
	CmdUserAddr  uint16 = 0x0001
	CmdTransport uint16 = 0x0002
	CmdOkay      uint16 = 0x1000
	CmdDeny      uint16 = 0x1001
	CmdControl   uint16 = 0x1002
)

// MaxBodyLen is the largest body a frame can carry (BODYLEN is 2 bytes).
const MaxBodyLen = 0xffff

// Sizes fixed by ext-orport-spec 2.1.
const (
	cookieLen = 32
	nonceLen  = 32
	hashLen   = sha256.Size

	// authTypeSafeCookie is the only authentication type the spec defines:
	// "[1] SAFE_COOKIE".
	authTypeSafeCookie = 1

	authStatusFailure = 0
	authStatusSuccess = 1
)

// The HMAC keys' companion strings, exactly as in ext-orport-spec 2.1.
const (
	serverHashContext = "ExtORPort authentication server-to-client hash"
	clientHashContext = "ExtORPort authentication client-to-server hash"
)

// Errors callers can match with errors.Is to log precisely.
var (
	// ErrAuthFailed: the peer's hash does not match our cookie (the server
	// saw a wrong ClientHash, the client saw a wrong ServerHash, or the
	// server answered AuthStatus 0).
	ErrAuthFailed = errors.New("extorport: authentication failed")
	// ErrUnsupportedAuth: the peer chose, or offered, no SAFE_COOKIE.
	ErrUnsupportedAuth = errors.New("extorport: unsupported authentication type")
	// ErrDenied: the server answered DENY.
	ErrDenied = errors.New("extorport: denied")
	// ErrBadUserAddr: a USERADDR that is not ip:port.
	ErrBadUserAddr = errors.New("extorport: bad USERADDR")
	// ErrBadTransport: a TRANSPORT that is not a C identifier.
	ErrBadTransport = errors.New("extorport: bad TRANSPORT")
	// ErrTooManyFrames: more frames than the handshake allows.
	ErrTooManyFrames = errors.New("extorport: too many frames")
	// ErrBadCookie: a cookie (file) of the wrong length or header.
	ErrBadCookie = errors.New("extorport: bad auth cookie")
	// ErrFrameTooLong: a frame body longer than MaxBodyLen.
	ErrFrameTooLong = errors.New("extorport: frame body too long")
)

// Meta is the metadata an Extended ORPort connection carries, as received
// (server side) or to send (client side). An empty field is absent.
type Meta struct {
	// UserAddr is the USERADDR body: "1.2.3.4:5678" or "[1:2::3:4]:5678".
	UserAddr string
	// Transport is the TRANSPORT body: a C identifier.
	Transport string
}

// AddrPort parses m.UserAddr. Compare addresses this way rather than as
// strings, since a peer need not spell an IPv6 address canonically.
func (m Meta) AddrPort() (netip.AddrPort, error) {
	return parseUserAddr(m.UserAddr)
}

// ReadFrame reads one frame. ext-orport-spec 3.1: "CMD [2 bytes], BODYLEN
// [2 bytes], BODY [BODYLEN bytes]". It reads exactly the frame and nothing
// more. A stream that ends before the header yields io.EOF (wrapped); one that
// ends inside the frame yields io.ErrUnexpectedEOF (wrapped).
func ReadFrame(r io.Reader) (cmd uint16, body []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("extorport: reading frame header: %w", err)
	}
	cmd = binary.BigEndian.Uint16(hdr[0:2])
	n := binary.BigEndian.Uint16(hdr[2:4])
	body = make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("extorport: reading %d-byte body of frame 0x%04x: %w", n, cmd, err)
	}
	return cmd, body, nil
}

// WriteFrame writes one frame in a single Write. A body longer than
// MaxBodyLen is an error (ErrFrameTooLong) and nothing is written.
func WriteFrame(w io.Writer, cmd uint16, body []byte) error {
	if len(body) > MaxBodyLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrFrameTooLong, len(body), MaxBodyLen)
	}
	buf := make([]byte, 4+len(body))
	binary.BigEndian.PutUint16(buf[0:2], cmd)
	binary.BigEndian.PutUint16(buf[2:4], uint16(len(body)))
	copy(buf[4:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("extorport: writing frame 0x%04x: %w", cmd, err)
	}
	return nil
}

// parseUserAddr checks a USERADDR body. ext-orport-spec 3.2.1: "This is an
// ASCII string representing the client's IP address and port. The IP address
// is either an IPv4 address (1.2.3.4) or an IPv6 address in brackets
// ([1:2::3:4]), a colon, and a port number. There is no terminating NUL
// byte." Zones and port 0 are refused too: no remote address carries them.
func parseUserAddr(s string) (netip.AddrPort, error) {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return netip.AddrPort{}, fmt.Errorf("%w %q: byte 0x%02x at %d is not printable ASCII", ErrBadUserAddr, s, s[i], i)
		}
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w %q: %w", ErrBadUserAddr, s, err)
	}
	if ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%w %q: zone not allowed", ErrBadUserAddr, s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w %q: port 0", ErrBadUserAddr, s)
	}
	return ap, nil
}

// checkTransport checks a TRANSPORT body. ext-orport-spec 3.2.2: the name of
// the pluggable transport, which pt-spec requires to be a C identifier,
// [a-zA-Z_][a-zA-Z0-9_]*; tor closes the connection on anything else.
func checkTransport(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrBadTransport)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || (i > 0 && '0' <= c && c <= '9')
		if !ok {
			return fmt.Errorf("%w %q: byte 0x%02x at %d is not a C identifier character", ErrBadTransport, s, c, i)
		}
	}
	return nil
}

// authHash computes HMAC-SHA256(cookie, context | ClientNonce | ServerNonce)
// (ext-orport-spec 2.1).
func authHash(cookie []byte, context string, clientNonce, serverNonce []byte) []byte {
	h := hmac.New(sha256.New, cookie)
	h.Write([]byte(context))
	h.Write(clientNonce)
	h.Write(serverNonce)
	return h.Sum(nil)
}
