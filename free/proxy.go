package free

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/shim"
)

// Proxy is the free end on the client: a SOCKS5 server (RFC 1928) whose
// CONNECT and UDP ASSOCIATE requests, to any IPv4, IPv6 or name
// destination, become streams of the Keeper's session. Handle serves one
// application connection; an accept loop (chain.SOCKSServer.ServeFunc)
// owns the listener.
type Proxy struct {
	Keeper *Keeper
	// Check, when set, requires RFC 1929 username/password authentication
	// and says whether a username and password are right
	// (LoadCredentials); nil: no authentication.
	Check          func(user, pass []byte) bool
	RequestTimeout time.Duration // bound on reading a request; 0: shim.DefaultRequestTimeout
	Logger         *slog.Logger  // nil: slog.Default()
	// Wait: every CONNECT waits for the bridge's reply before the SOCKS
	// reply (Keeper.Open), so that the application hears the bridge's
	// exact reply code. By default a CONNECT to an IP address that the
	// bridge's advertised policy allows is granted at once (Keeper.Start),
	// and a failure to reach it later resets the application's
	// connection.
	Wait bool
}

func (p *Proxy) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.Default()
	}
	return p.Logger
}

// unbound is the BND of a reply that binds nothing: IPv4 0.0.0.0:0.
var unbound = shim.AddrFrom(netip.AddrPortFrom(netip.IPv4Unspecified(), 0))

// Handle serves one application connection until it ends or ctx does; it
// does not close conn.
func (p *Proxy) Handle(ctx context.Context, conn net.Conn) {
	stop := context.AfterFunc(ctx, func() { conn.Close() }) // ends a pending handshake
	defer stop()
	log := p.logger().With("chain", p.Keeper.Label)
	req, err := shim.ReadProxyRequest(conn, p.RequestTimeout, p.Check)
	if err != nil {
		log.Info("bad SOCKS request", "err", err)
		return
	}
	switch req.Command {
	case shim.CmdConnect:
		p.connect(ctx, conn, req, log)
	case shim.CmdUDPAssociate:
		p.associate(ctx, conn, req, log)
	}
}

// connect carries one CONNECT through a stream.
func (p *Proxy) connect(ctx context.Context, conn net.Conn, req *shim.ProxyRequest, log *slog.Logger) {
	h := Header{Command: Connect, Dest: req.Dst}
	granted := false
	grant := func() error {
		granted = true
		return shim.ReplyBound(conn, shim.RepSucceeded, unbound)
	}
	var st *Stream
	var err error
	if p.Wait {
		st, err = p.Keeper.Open(ctx, h)
	} else {
		st, err = p.Keeper.Start(ctx, h, &Grant{Tell: grant, First: func() ([]byte, error) { return firstBytes(conn) }})
	}
	if err != nil && granted {
		log.Info("CONNECT failed after it was granted: the application's connection is reset", "err", err)
		(&resetOnBreak{app: conn}).reset()
		return
	}
	if err != nil {
		code := ReplyCode(err)
		var re *RefusedError
		if errors.As(err, &re) && re.Rule != "" {
			log.Warn("destination refused by policy (the bridge's, as it advertised it: refused here)", "why", re.Rule, "socks_reply", code)
		} else {
			log.Info("CONNECT failed", "err", err, "socks_reply", code)
		}
		shim.ReplyBound(conn, code, unbound)
		return
	}
	if !granted {
		if err := grant(); err != nil {
			st.Close()
			return
		}
	}
	shim.Pipe(ctx, conn, &resetOnBreak{stream: st, app: conn, log: log})
}

// firstWait bounds the wait for an application's first bytes after an
// optimistic grant, to send them with the stream's header: a client that
// speaks first sends them within a wake-up; one that waits for its server
// (SMTP, SSH) loses this much once.
const firstWait = time.Millisecond

// firstBytes reads what the application sends at once after the SOCKS
// reply, up to a small frame's worth; nothing within firstWait is nil.
func firstBytes(conn net.Conn) ([]byte, error) {
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(firstWait))
	n, err := conn.Read(buf)
	conn.SetReadDeadline(time.Time{})
	if err == io.EOF || errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil // the copy hears the EOF again
	}
	return buf[:n], err
}

// resetOnBreak is a stream as Pipe sees it: an error on it, or an end
// that is its session's (smux ends every stream with io.EOF when the
// connection ends), resets the application's connection, so that the
// application hears a failure rather than an end of its data.
type resetOnBreak struct {
	stream *Stream
	app    net.Conn
	log    *slog.Logger
}

var errBroke = errors.New("free: the session broke")

func (r *resetOnBreak) Read(b []byte) (int, error) {
	n, err := r.stream.Read(b)
	if err == io.EOF && r.stream.broke() {
		err = errBroke
	}
	if err != nil && err != io.EOF {
		r.fail(err)
	}
	return n, err
}

// WriteTo keeps smux's WriteTo, which writes the session's buffers to w
// without copying them first.
func (r *resetOnBreak) WriteTo(w io.Writer) (int64, error) {
	n, err := r.stream.WriteTo(w)
	if err == nil && r.stream.broke() {
		err = errBroke
	}
	if err != nil {
		r.fail(err)
	}
	return n, err
}

// ReadFrom writes r's bytes to the stream through copyAdaptive's
// buffers (io.Copy's are 32 KiB: a frame each, half full).
func (r *resetOnBreak) ReadFrom(src io.Reader) (int64, error) {
	return copyAdaptive(writeOnly{r}, src) // r.Write resets on a failed write
}

type writeOnly struct{ io.Writer }

// fail resets the application's connection, and says so when the bridge
// refused a stream that had been granted.
func (r *resetOnBreak) fail(err error) {
	var re *RefusedError
	if errors.As(err, &re) && re.Granted {
		r.log.Info("CONNECT refused by the bridge after it was granted: the application's connection is reset",
			"err", err, "socks_reply", re.Rep)
	}
	r.reset()
}

func (r *resetOnBreak) Write(b []byte) (int, error) {
	n, err := r.stream.Write(b)
	if err != nil {
		r.fail(err)
	}
	return n, err
}

// reset makes the application connection's close a TCP reset.
func (r *resetOnBreak) reset() {
	if tc, ok := r.app.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

func (r *resetOnBreak) Close() error                       { return r.stream.Close() }
func (r *resetOnBreak) CloseWrite() error                  { return r.stream.CloseWrite() }
func (r *resetOnBreak) LocalAddr() net.Addr                { return r.stream.LocalAddr() }
func (r *resetOnBreak) RemoteAddr() net.Addr               { return r.stream.RemoteAddr() }
func (r *resetOnBreak) SetDeadline(t time.Time) error      { return r.stream.SetDeadline(t) }
func (r *resetOnBreak) SetReadDeadline(t time.Time) error  { return r.stream.SetReadDeadline(t) }
func (r *resetOnBreak) SetWriteDeadline(t time.Time) error { return r.stream.SetWriteDeadline(t) }

// associate serves one UDP ASSOCIATE: a UDP relay socket beside the
// control connection, and a UDP stream. RFC 1928 section 7: "A UDP
// association terminates when the TCP connection that the UDP ASSOCIATE
// request arrived on terminates."
func (p *Proxy) associate(ctx context.Context, conn net.Conn, req *shim.ProxyRequest, log *slog.Logger) {
	local, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	remote, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.Addr().Unmap(), 0)))
	if err != nil {
		log.Warn("cannot open a UDP relay socket", "err", err)
		shim.ReplyBound(conn, shim.RepGeneralFailure, unbound)
		return
	}
	defer pc.Close()
	st, err := p.Keeper.Open(ctx, Header{Command: UDP})
	if err != nil {
		code := ReplyCode(err)
		log.Info("UDP ASSOCIATE failed", "err", err, "socks_reply", code)
		shim.ReplyBound(conn, code, unbound)
		return
	}
	defer st.Close()
	bound := netip.MustParseAddrPort(pc.LocalAddr().String())
	if err := shim.ReplyBound(conn, shim.RepSucceeded, shim.AddrFrom(bound)); err != nil {
		return
	}
	a := &association{pc: pc, st: st, client: remote.Addr().Unmap(), log: log}
	// "the client expects to use [DST.ADDR and DST.PORT] to send UDP
	// datagrams on for the association": a port given pins the client's.
	if ap, ok := req.Dst.AddrPort(); ok && ap.Port() != 0 {
		a.pin(netip.AddrPortFrom(a.client, ap.Port()))
	}
	var once sync.Once
	end := func() { once.Do(func() { pc.Close(); st.Close(); conn.Close() }) }
	stop := context.AfterFunc(ctx, end)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { defer end(); a.up() })
	wg.Go(func() { defer end(); a.down() })
	io.Copy(io.Discard, conn) // the control connection: its end ends the association
	end()
	wg.Wait()
}

// association is one UDP ASSOCIATE on the client.
type association struct {
	pc     *net.UDPConn
	st     *Stream
	client netip.Addr // the control connection's peer: datagrams from elsewhere are dropped
	log    *slog.Logger
	app    atomic.Pointer[netip.AddrPort] // where the application sends from, once known
}

func (a *association) pin(ap netip.AddrPort) { a.app.Store(&ap) }

// up frames the application's datagrams onto the stream, in order.
func (a *association) up() {
	buf := make([]byte, maxFrame)
	frame := make([]byte, 0, 2+maxFrame)
	for {
		n, from, err := a.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		// RFC 1928 section 7: "MUST drop any datagrams arriving from any
		// source IP address other than the one recorded for the particular
		// association."
		if from.Addr() != a.client {
			continue
		}
		if app := a.app.Load(); app == nil {
			a.pin(from)
		} else if *app != from {
			continue
		}
		dst, data, err := shim.ParseUDPRequest(buf[:n])
		if err != nil {
			a.log.Debug("UDP datagram dropped", "err", err)
			continue
		}
		if frame, err = AppendFrame(frame[:0], dst, data); err != nil {
			a.log.Debug("UDP datagram dropped", "err", err)
			continue
		}
		if _, err := a.st.Write(frame); err != nil {
			return
		}
	}
}

// down sends the stream's frames to the application, each with its
// source in the RFC 1928 UDP header.
func (a *association) down() {
	buf := make([]byte, maxFrame)
	out := make([]byte, 0, 3+maxFrame)
	for {
		src, data, err := ReadFrame(a.st, buf)
		if errors.Is(err, ErrFrame) {
			continue
		}
		if err != nil {
			return
		}
		app := a.app.Load()
		if app == nil {
			continue
		}
		if out, err = shim.AppendUDPHeader(out[:0], src); err != nil {
			continue
		}
		out = append(out, data...)
		if _, err := a.pc.WriteToUDPAddrPort(out, *app); err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}
