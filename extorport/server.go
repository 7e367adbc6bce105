package extorport

import (
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// DefaultTimeout bounds a whole handshake when a config leaves Timeout zero.
const DefaultTimeout = 10 * time.Second

// DefaultMaxFrames bounds the frames a server reads, DONE included, when
// ServerConfig.MaxFrames is zero.
const DefaultMaxFrames = 64

// ServerConfig configures ServerHandshake. Its zero value is usable but for
// Cookie.
type ServerConfig struct {
	// Cookie is the 32-byte cookie written to the cookie file the clients
	// read (see WriteCookieFile).
	Cookie []byte
	// Timeout bounds the whole handshake, frames included; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// MaxFrames bounds the frames read, DONE included; 0 means
	// DefaultMaxFrames.
	MaxFrames int
}

// ServerHandshake runs the server side of an Extended ORPort connection up to
// and including the client's DONE, and returns the metadata it received. It
// does not answer DONE: the caller decides and calls Okay or Deny. On error
// the caller closes conn (ext-orport-spec: on failure "the server MUST close
// the connection"). The deadline set on conn covers the whole handshake and is
// cleared on success. No byte past DONE is read.
func ServerHandshake(conn net.Conn, cfg ServerConfig) (Meta, error) {
	if err := checkCookie(cfg.Cookie); err != nil {
		return Meta{}, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	maxFrames := cfg.MaxFrames
	if maxFrames <= 0 {
		maxFrames = DefaultMaxFrames
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return Meta{}, fmt.Errorf("extorport: setting handshake deadline: %w", err)
	}
	if err := serverAuth(conn, cfg.Cookie); err != nil {
		return Meta{}, err
	}
	meta, err := serverReadMeta(conn, maxFrames)
	if err != nil {
		return Meta{}, err
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return Meta{}, fmt.Errorf("extorport: clearing handshake deadline: %w", err)
	}
	return meta, nil
}

// serverAuth runs SAFE_COOKIE authentication (ext-orport-spec 2, 2.1).
func serverAuth(rw io.ReadWriter, cookie []byte) error {
	// ext-orport-spec 2: "AuthTypes [variable], EndAuthTypes [1 octet]";
	// "EndAuthTypes is the special value 0". We offer SAFE_COOKIE only.
	if _, err := rw.Write([]byte{authTypeSafeCookie, 0}); err != nil {
		return fmt.Errorf("extorport: sending auth types: %w", err)
	}
	// "If the client sent an AuthType of value 0, or an AuthType that the
	// server does not support, the server MUST close the connection."
	var authType [1]byte
	if _, err := io.ReadFull(rw, authType[:]); err != nil {
		return fmt.Errorf("extorport: reading auth type: %w", err)
	}
	if authType[0] != authTypeSafeCookie {
		return fmt.Errorf("%w: client chose %d, want %d (SAFE_COOKIE)", ErrUnsupportedAuth, authType[0], authTypeSafeCookie)
	}
	// ext-orport-spec 2.1: the client sends "ClientNonce [32 octets]".
	clientNonce := make([]byte, nonceLen)
	if _, err := io.ReadFull(rw, clientNonce); err != nil {
		return fmt.Errorf("extorport: reading client nonce: %w", err)
	}
	// The server sends "ServerHash [32 octets], ServerNonce [32 octets]".
	serverNonce := make([]byte, nonceLen)
	if _, err := rand.Read(serverNonce); err != nil {
		return fmt.Errorf("extorport: generating server nonce: %w", err)
	}
	msg := authHash(cookie, serverHashContext, clientNonce, serverNonce)
	msg = append(msg, serverNonce...)
	if _, err := rw.Write(msg); err != nil {
		return fmt.Errorf("extorport: sending server hash and nonce: %w", err)
	}
	// The client answers "ClientHash [32 octets]"; the server replies
	// "AuthStatus [1 octet]", 1 on success and 0 on failure.
	clientHash := make([]byte, hashLen)
	if _, err := io.ReadFull(rw, clientHash); err != nil {
		return fmt.Errorf("extorport: reading client hash: %w", err)
	}
	want := authHash(cookie, clientHashContext, clientNonce, serverNonce)
	if !hmac.Equal(clientHash, want) {
		err := ErrAuthFailed
		if _, werr := rw.Write([]byte{authStatusFailure}); werr != nil {
			err = errors.Join(err, fmt.Errorf("extorport: sending auth status 0: %w", werr))
		}
		return err
	}
	if _, err := rw.Write([]byte{authStatusSuccess}); err != nil {
		return fmt.Errorf("extorport: sending auth status 1: %w", err)
	}
	return nil
}

// serverReadMeta reads frames until DONE (ext-orport-spec 3).
func serverReadMeta(r io.Reader, maxFrames int) (Meta, error) {
	var meta Meta
	for n := 0; ; n++ {
		if n >= maxFrames {
			return Meta{}, fmt.Errorf("%w: no DONE within %d frames", ErrTooManyFrames, maxFrames)
		}
		cmd, body, err := ReadFrame(r)
		if err != nil {
			return Meta{}, err
		}
		switch cmd {
		case CmdDone:
			// "[0x0000] DONE: There is no more information to give."
			return meta, nil
		case CmdUserAddr:
			// tor closes the connection on an unparsable USERADDR; so do we.
			if _, err := parseUserAddr(string(body)); err != nil {
				return Meta{}, err
			}
			meta.UserAddr = string(body)
		case CmdTransport:
			// Likewise for TRANSPORT; a repeated TRANSPORT replaces the
			// earlier one, as in tor.
			if err := checkTransport(string(body)); err != nil {
				return Meta{}, err
			}
			meta.Transport = string(body)
		default:
			// ext-orport-spec 3.1: commands a party does not understand
			// MUST be ignored.
		}
	}
}

// Okay answers DONE with OKAY (ext-orport-spec 3.1.1: "[0x1000] OKAY: Send
// the user's traffic.").
func Okay(conn net.Conn) error {
	return WriteFrame(conn, CmdOkay, nil)
}

// Deny answers DONE with DENY (ext-orport-spec 3.1.1: "[0x1001] DENY: Tor
// would prefer not to get more traffic from this address for a while.").
// The caller then closes conn.
func Deny(conn net.Conn) error {
	return WriteFrame(conn, CmdDeny, nil)
}
