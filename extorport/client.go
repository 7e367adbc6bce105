package extorport

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// maxAuthTypes bounds the auth types list a client reads: 255 non-zero types
// and the terminator.
const maxAuthTypes = 256

// maxReplyFrames bounds the frames a client reads while waiting for OKAY.
const maxReplyFrames = 64

// ClientConfig configures ClientHandshake and Dial. Its zero value is usable
// but for CookiePath.
type ClientConfig struct {
	// CookiePath is tor's ExtORPort cookie file. It is read anew for every
	// handshake, since tor rewrites it at every start, unless Cookie is set.
	CookiePath string
	// Cookie, when set, is the 32-byte cookie, already read from CookiePath
	// by a caller that keeps it while the file is unchanged.
	Cookie []byte
	// Timeout bounds the whole handshake; 0 means DefaultTimeout.
	Timeout time.Duration
}

// ClientHandshake runs the client side of an Extended ORPort connection: it
// authenticates with the cookie at cfg.CookiePath, sends meta.UserAddr and
// meta.Transport (each only if non-empty) and DONE, and waits for OKAY. It
// writes nothing else, so no data can reach tor before OKAY (tor closes a
// connection with bytes buffered after DONE). On error the caller closes
// conn. The deadline is cleared on success; no byte past OKAY is read.
func ClientHandshake(conn net.Conn, cfg ClientConfig, meta Meta) error {
	return clientHandshake(context.Background(), conn, cfg, meta)
}

// clientHandshake is ClientHandshake, aborted when ctx is done.
func clientHandshake(ctx context.Context, conn net.Conn, cfg ClientConfig, meta Meta) (err error) {
	// Fail before sending anything on metadata tor would refuse.
	if meta.UserAddr != "" {
		if _, err := parseUserAddr(meta.UserAddr); err != nil {
			return err
		}
	}
	if meta.Transport != "" {
		if err := checkTransport(meta.Transport); err != nil {
			return err
		}
	}
	cookie := cfg.Cookie
	if cookie == nil {
		if cookie, err = ReadCookieFile(cfg.CookiePath); err != nil {
			return err
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("extorport: setting handshake deadline: %w", err)
	}
	// Cancelling ctx interrupts blocked I/O by moving the deadline into the
	// past; registered after our own deadline so that it wins.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			// ctx is done: whatever happened, the deadline may now be in
			// the past, so the handshake counts as aborted.
			if err == nil {
				err = fmt.Errorf("extorport: handshake aborted: %w", context.Cause(ctx))
			} else {
				err = fmt.Errorf("extorport: handshake aborted: %w (%w)", context.Cause(ctx), err)
			}
			return
		}
		if err == nil {
			if cerr := conn.SetDeadline(time.Time{}); cerr != nil {
				err = fmt.Errorf("extorport: clearing handshake deadline: %w", cerr)
			}
		}
	}()
	meta0, err := encodeMeta(meta)
	if err != nil {
		return err
	}
	if err := clientAuth(conn, cookie, meta0); err != nil {
		return err
	}
	return clientAwaitOkay(conn)
}

// clientAuth runs SAFE_COOKIE authentication (ext-orport-spec 2, 2.1) and
// sends the metadata frames, in two round trips rather than four: the
// AuthType and ClientNonce go out at once, without waiting for the server's
// AuthTypes (SAFE_COOKIE is the only type there is), and the metadata
// frames go out with the ClientHash, without waiting for the AuthStatus.
// Tor reads both in order from its buffer (ext_orport.c processes
// authentication data in a loop, then commands); a server that refuses
// either one closes the connection, which fails the handshake here.
func clientAuth(rw io.ReadWriter, cookie, meta []byte) error {
	// "AuthType [1 octet]" then "ClientNonce [32 octets]", in one write.
	msg := make([]byte, 1+nonceLen)
	msg[0] = authTypeSafeCookie
	clientNonce := msg[1:]
	if _, err := rand.Read(clientNonce); err != nil {
		return fmt.Errorf("extorport: generating client nonce: %w", err)
	}
	if _, err := rw.Write(msg); err != nil {
		return fmt.Errorf("extorport: sending auth type and client nonce: %w", err)
	}
	// ext-orport-spec 2: "AuthTypes are the authentication schemes that the
	// server supports for this session. They are multiple concatenated
	// 1-octet values that take values from 1 to 255." then "EndAuthTypes is
	// the special value 0". Read one byte at a time: nothing past 0x00.
	offered := false
	var b [1]byte
	for n := 0; ; n++ {
		if n >= maxAuthTypes {
			return fmt.Errorf("extorport: no end of auth types within %d bytes", maxAuthTypes)
		}
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return fmt.Errorf("extorport: reading auth types: %w", err)
		}
		if b[0] == 0 {
			break
		}
		if b[0] == authTypeSafeCookie {
			offered = true
		}
	}
	if !offered {
		return fmt.Errorf("%w: server does not offer SAFE_COOKIE", ErrUnsupportedAuth)
	}
	// "ServerHash [32 octets], ServerNonce [32 octets]".
	reply := make([]byte, hashLen+nonceLen)
	if _, err := io.ReadFull(rw, reply); err != nil {
		return fmt.Errorf("extorport: reading server hash and nonce: %w", err)
	}
	serverHash, serverNonce := reply[:hashLen], reply[hashLen:]
	// The client checks ServerHash and, if it is wrong, terminates.
	if !hmac.Equal(serverHash, authHash(cookie, serverHashContext, clientNonce, serverNonce)) {
		return fmt.Errorf("%w: wrong server hash (stale cookie file?)", ErrAuthFailed)
	}
	out := append(authHash(cookie, clientHashContext, clientNonce, serverNonce), meta...)
	if _, err := rw.Write(out); err != nil {
		return fmt.Errorf("extorport: sending client hash and metadata: %w", err)
	}
	// "AuthStatus [1 octet]": 1 on success, 0 on failure.
	if _, err := io.ReadFull(rw, b[:]); err != nil {
		return fmt.Errorf("extorport: reading auth status: %w", err)
	}
	if b[0] != authStatusSuccess {
		return fmt.Errorf("%w: server sent auth status %d", ErrAuthFailed, b[0])
	}
	return nil
}

// encodeMeta encodes USERADDR, TRANSPORT (each if non-empty) and DONE
// (ext-orport-spec 3.1.1), to be sent in one write.
func encodeMeta(meta Meta) ([]byte, error) {
	var buf frameBuffer
	if meta.UserAddr != "" {
		if err := WriteFrame(&buf, CmdUserAddr, []byte(meta.UserAddr)); err != nil {
			return nil, err
		}
	}
	if meta.Transport != "" {
		if err := WriteFrame(&buf, CmdTransport, []byte(meta.Transport)); err != nil {
			return nil, err
		}
	}
	if err := WriteFrame(&buf, CmdDone, nil); err != nil {
		return nil, err
	}
	return buf, nil
}

// frameBuffer collects frames so they leave in a single write.
type frameBuffer []byte

func (b *frameBuffer) Write(p []byte) (int, error) {
	*b = append(*b, p...)
	return len(p), nil
}

// clientAwaitOkay reads frames until OKAY; DENY is an error and any other
// command is ignored (ext-orport-spec 3.1), a bounded number of times.
func clientAwaitOkay(r io.Reader) error {
	for n := 0; n < maxReplyFrames; n++ {
		cmd, _, err := ReadFrame(r)
		if err != nil {
			return fmt.Errorf("extorport: waiting for OKAY: %w", err)
		}
		switch cmd {
		case CmdOkay:
			return nil
		case CmdDeny:
			return ErrDenied
		}
	}
	return fmt.Errorf("%w: no OKAY within %d frames", ErrTooManyFrames, maxReplyFrames)
}

// Dial connects to the Extended ORPort at addr and runs ClientHandshake. It
// closes the connection on failure. Cancelling ctx aborts the dial and the
// handshake.
func Dial(ctx context.Context, addr string, cfg ClientConfig, meta Meta) (*net.TCPConn, error) {
	c, err := loopback.Dialer(addr).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("extorport: dialing %s: %w", addr, err)
	}
	conn, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("extorport: dialing %s: got %T, want *net.TCPConn", addr, c)
	}
	if err := clientHandshake(ctx, conn, cfg, meta); err != nil {
		conn.Close()
		return nil, fmt.Errorf("extorport: handshake with %s: %w", addr, err)
	}
	return conn, nil
}
