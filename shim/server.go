package shim

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// DefaultRequestTimeout bounds ReadRequest when it is given no timeout; it
// is goptlib's own socksRequestTimeout.
const DefaultRequestTimeout = 5 * time.Second

// Request is a SOCKS5 CONNECT request as ReadRequest read it.
type Request struct {
	// Target is "host:port"; an IPv6 address is bracketed, "[addr]:port".
	Target string
	// Username and Password are the RFC 1929 credentials, empty without
	// authentication. A password of a single NUL byte is reported as "".
	Username, Password string
	// Args are Username+Password parsed as PT client arguments; empty,
	// never nil, without authentication.
	Args pt.Args
}

// ReadRequest reads a SOCKS5 CONNECT request from conn, replying to the
// method selection and the authentication but not to the request: the
// caller answers that with Grant or Reject once it knows the outcome.
//
// It mirrors goptlib's server (PROTOCOLS.md A21), with the handshake in the
// caller's goroutine: version 5 only; "username/password" (0x02) is
// preferred over "no authentication" (0x00) when both are offered; RFC 1929
// credentials need ULEN >= 1; a password of exactly one NUL byte means none
// (tor sends that when its arguments fit the username, A20), and so does an
// empty one (PLEN = 0, which RFC 1929 does not allow but curl sends for
// --proxy-user ARGS:, how an application without tor gives PT arguments;
// goptlib refuses it, tor never sends it); the credentials must parse as PT
// arguments; only CONNECT and address types 1, 3 and 4 are served.
//
// Where RFC 1928/1929 has a reply for a failure, ReadRequest sends it before
// returning the error (0xFF for no acceptable method, status 0x01 for a
// failed authentication, REP 0x07 for a command other than CONNECT, REP 0x08
// for an unknown address type, REP 0x01 for another malformed request); the
// caller then only closes conn. It reads exactly the handshake's bytes, never
// more, so data pipelined after the request stays in conn.
//
// The whole exchange is bounded by timeout (DefaultRequestTimeout when
// timeout <= 0); conn's deadline is cleared before ReadRequest returns.
func ReadRequest(conn net.Conn, timeout time.Duration) (*Request, error) {
	var req *Request
	err := underDeadline(conn, timeout, func() (err error) {
		req, err = readRequest(conn)
		return err
	})
	if err != nil {
		return nil, err
	}
	return req, nil
}

// underDeadline runs a server's side of a handshake, f, with conn's
// deadline timeout ahead (DefaultRequestTimeout when timeout <= 0), and
// clears the deadline after.
func underDeadline(conn net.Conn, timeout time.Duration, f func() error) (err error) {
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("socks5 server: set deadline: %w", err)
	}
	defer func() {
		if cerr := conn.SetDeadline(time.Time{}); cerr != nil && err == nil {
			err = fmt.Errorf("socks5 server: clear deadline: %w", cerr)
		}
	}()
	if err := f(); err != nil {
		return fmt.Errorf("socks5 server: %w", err)
	}
	return nil
}

func readRequest(conn net.Conn) (*Request, error) {
	// goptlib: "Pick Username/Password over None if the client happens to
	// send both."
	method, err := selectMethod(conn, true, true)
	if err != nil {
		return nil, err
	}
	req := &Request{Args: make(pt.Args)}
	if method == methodUserPass {
		err := readUserPass(conn, func(user, pass []byte) error {
			req.Username = string(user)
			// PROTOCOLS.md A20: tor sends PASSWD = "\x00" (PLEN=1) when its
			// arguments fit the username; that means no password, as PLEN=0
			// (curl's --proxy-user ARGS:) does.
			if len(pass) == 1 && pass[0] == 0 {
				pass = nil
			}
			req.Password = string(pass)
			args, err := metadata.ParseClientArgs(req.Username + req.Password)
			if err != nil {
				return fmt.Errorf("bad PT arguments in username/password: %w", err)
			}
			req.Args = args
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	_, dst, err := readCommand(conn, func(cmd byte) bool { return cmd == cmdConnect })
	if err != nil {
		return nil, err
	}
	// String brackets an IPv6 address: "[addr]:port".
	req.Target = dst.String()
	return req, nil
}

// selectMethod reads RFC 1928 section 3's VER | NMETHODS | METHODS and
// answers with the method chosen: "username/password" (0x02) when userPass
// allows it and the client offers it, else "no authentication" (0x00) when
// none allows it and the client offers it, else 0xFF ("NO ACCEPTABLE
// METHODS"), which is an error.
func selectMethod(conn net.Conn, userPass, none bool) (byte, error) {
	var b [2]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return 0, fmt.Errorf("read method selection: %w", err)
	}
	if b[0] != socksVersion {
		return 0, fmt.Errorf("%w: version 0x%02x, want 0x05", ErrMalformed, b[0])
	}
	methods := make([]byte, b[1])
	if _, err := io.ReadFull(conn, methods); err != nil {
		return 0, fmt.Errorf("read %d methods: %w", len(methods), err)
	}
	method := byte(methodNoAcceptable)
	for _, m := range methods {
		switch {
		case m == methodUserPass && userPass:
			method = m
		case m == methodNone && none && method == methodNoAcceptable:
			method = m
		}
	}
	if _, err := conn.Write([]byte{socksVersion, method}); err != nil {
		return 0, fmt.Errorf("send method selection reply: %w", err)
	}
	if method == methodNoAcceptable {
		return 0, fmt.Errorf("%w: offered % x", ErrNoAcceptableMethods, methods)
	}
	return method, nil
}

// readCommand reads RFC 1928 section 4's VER | CMD | RSV | ATYP | DST.ADDR
// | DST.PORT. A command that served refuses gets REP 0x07 before its
// address is read, an unknown address type REP 0x08, any other malformed
// request REP 0x01.
func readCommand(conn net.Conn, served func(cmd byte) bool) (byte, Addr, error) {
	var b [4]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return 0, Addr{}, fmt.Errorf("read request: %w", err)
	}
	switch {
	case b[0] != socksVersion:
		return 0, Addr{}, rejectWith(conn, RepGeneralFailure, fmt.Errorf("%w: request version 0x%02x, want 0x05", ErrMalformed, b[0]))
	case !served(b[1]):
		return 0, Addr{}, rejectWith(conn, RepCommandNotSupported, fmt.Errorf("%w: command 0x%02x", ErrCommandNotSupported, b[1]))
	case b[2] != 0:
		return 0, Addr{}, rejectWith(conn, RepGeneralFailure, fmt.Errorf("%w: reserved byte 0x%02x, want 0x00", ErrMalformed, b[2]))
	}
	dst, err := readAddrAfter(conn, b[3])
	switch {
	case errors.Is(err, ErrAddressNotSupported):
		return 0, Addr{}, rejectWith(conn, RepAddressNotSupported, err)
	case errors.Is(err, ErrMalformed):
		return 0, Addr{}, rejectWith(conn, RepGeneralFailure, err)
	case err != nil:
		return 0, Addr{}, err
	}
	return b[1], dst, nil
}

// readUserPass reads RFC 1929's VER | ULEN | UNAME | PLEN | PASSWD, asks
// check about the credentials and answers: status 0x00 when check passes,
// 0x01 when it does not or the message is malformed ("any other value of
// STATUS indicates failure").
func readUserPass(conn net.Conn, check func(user, pass []byte) error) error {
	fail := func(err error) error {
		// The reply is a courtesy: the caller closes conn anyway, and err
		// says more than a failed write would.
		conn.Write([]byte{userPassVersion, userPassFailure})
		return fmt.Errorf("%w: %w", ErrAuthFailed, err)
	}
	var b [2]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return fmt.Errorf("read username/password: %w", err)
	}
	if b[0] != userPassVersion {
		return fail(fmt.Errorf("%w: username/password version 0x%02x, want 0x01", ErrMalformed, b[0]))
	}
	if b[1] < 1 {
		return fail(errors.New("username of length 0"))
	}
	user := make([]byte, b[1])
	if _, err := io.ReadFull(conn, user); err != nil {
		return fmt.Errorf("read username: %w", err)
	}
	if _, err := io.ReadFull(conn, b[:1]); err != nil {
		return fmt.Errorf("read password length: %w", err)
	}
	pass := make([]byte, b[0]) // PLEN = 0 from curl: no password
	if _, err := io.ReadFull(conn, pass); err != nil {
		return fmt.Errorf("read password: %w", err)
	}
	if err := check(user, pass); err != nil {
		return fail(err)
	}
	if _, err := conn.Write([]byte{userPassVersion, userPassSuccess}); err != nil {
		return fmt.Errorf("send authentication reply: %w", err)
	}
	return nil
}

// rejectWith sends a failure reply with code and returns err; the write's
// own error is dropped because err says more.
func rejectWith(conn net.Conn, code byte, err error) error {
	writeReply(conn, code)
	return err
}

// Grant tells the client that its request succeeded: REP 0x00 with
// BND.ADDR 0.0.0.0 and BND.PORT 0, as goptlib sends (tor does not use them).
func Grant(conn net.Conn) error {
	if err := writeReply(conn, RepSucceeded); err != nil {
		return fmt.Errorf("socks5 server: grant: %w", err)
	}
	return nil
}

// Reject tells the client that its request failed with code (one of the Rep
// constants, not RepSucceeded), with BND.ADDR 0.0.0.0 and BND.PORT 0.
func Reject(conn net.Conn, code byte) error {
	if code == RepSucceeded {
		return fmt.Errorf("socks5 server: reject with code 0x00, which means success")
	}
	if err := writeReply(conn, code); err != nil {
		return fmt.Errorf("socks5 server: reject with %s: %w", (&ReplyError{Code: code}).Error(), err)
	}
	return nil
}

// writeReply writes VER | REP | RSV | ATYP=1 | 0.0.0.0 | 0.
func writeReply(conn net.Conn, code byte) error {
	_, err := conn.Write([]byte{socksVersion, code, 0, atypIPv4, 0, 0, 0, 0, 0, 0})
	return err
}

// validHostName reports whether name holds only the bytes of a DNS host
// name (RFC 1123 letters, digits, '-' and '.', plus the '_' seen in
// practice). Anything else could not be resolved, and bytes such as ':',
// '[' or '%' would make Target ambiguous.
func validHostName(name []byte) bool {
	for _, c := range name {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}
