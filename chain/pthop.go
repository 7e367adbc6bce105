package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// failureGrace is how long an external hop whose PT has failed still waits
// for the hops outside it to report: a failure further out, which made
// this PT fail too, is the one to name.
const failureGrace = 250 * time.Millisecond

// ptHop is a hop served by a PT over SOCKS5 at proxy: a managed child
// (its CMETHOD) or an unmanaged PT (socks5 ADDR). It is a
// transport.Dialer.
//
// With no under it asks the PT for addr, and the PT reaches the network
// itself (through TOR_PT_PROXY, for a managed outermost child that was
// given it). With under, the hops outside it, it opens a one-use shim and
// asks the PT to connect to that; on the shim's single accept it dials
// under and pipes between the two. The connection is ready only when the
// PT has granted and under is up: a PT that grants before its own next
// hop is set up cannot make a broken chain look ready.
type ptHop struct {
	proxy  string          // the PT's SOCKS5 address
	life   context.Context // the client's: ends every pipe
	pipes  *sync.WaitGroup // the client's: counts every pipe
	linger time.Duration   // how long a pipe may drain after its conn closed
	log    *slog.Logger
	pid    int // the managed PT's process; 0 for an unmanaged one
	// warnings limits the warnings of taken shims (nil: every one).
	warnings *logLimit
}

var _ transport.Dialer = ptHop{}

// askedError is the failure of a PT that was asked, over SOCKS, for
// target; the route names the PT from it.
type askedError struct {
	proxy, target string
	err           error
}

func (e *askedError) Error() string { return e.err.Error() }
func (e *askedError) Unwrap() error { return e.err }

// socksCredentials are a hop's arguments in SOCKS5 form, split as tor
// splits them.
func socksCredentials(args metadata.Args) (user, pass []byte, err error) {
	return metadata.SOCKS5Credentials(metadata.EncodeClientArgs(args))
}

func (h ptHop) Dial(ctx context.Context, args metadata.Args, addr string, under transport.DialFunc) (transport.Conn, error) {
	start := time.Now()
	user, pass, err := socksCredentials(args)
	if err != nil {
		return nil, err
	}
	if under == nil {
		conn, err := shim.DialSOCKS5(ctx, h.proxy, addr, user, pass)
		if err != nil {
			return nil, &askedError{proxy: h.proxy, target: addr, err: withElapsed(err, start)}
		}
		return h.newConn(conn, start, nil), nil
	}
	for attempt := 1; ; attempt++ {
		l, err := shim.ListenOnce(shimListenAddr)
		if err != nil {
			return nil, fmt.Errorf("shim listener: %w", err)
		}
		if shimListening != nil {
			shimListening(l.Addr())
		}
		s := newShimSetup(ctx, h, l, user, pass, addr, under, start)
		ask, out, err := s.wait()
		if err == nil {
			return h.newConn(ask.conn, start, out.pipe), nil
		}
		taken := s.taken(err)
		if s.wasAccepted() {
			h.logger().Debug("a hop's setup failed after its shim accepted a connection", "pt", h.proxy, "shim", s.target,
				"accepted_from", s.acceptedFrom, "not_the_pt", s.stray, "taken", taken, "err", err)
		}
		if attempt > shimRetries || !taken || ctx.Err() != nil {
			return nil, err
		}
		msg, args := "the PT was refused by its shim, which another local connection must have taken; asking it again with a new shim",
			[]any{"pt", h.proxy, "shim", s.target, "taken_by", s.strayFrom(), "attempt", attempt}
		if h.warnings != nil {
			h.warnings.warn(h.logger(), msg, args...)
		} else {
			h.logger().Warn(msg, args...)
		}
	}
}

// shimListening, set by tests only, hears each shim's address before its
// PT is asked to connect to it.
var shimListening func(*net.TCPAddr)

// shimRetries is how many times a hop is asked again after a shim was
// taken. A shim listens on an ephemeral loopback port for the PT's one
// connection; any local program that connects to that port first (one
// retrying a port that was freed and handed to the shim, or a scan) takes
// the shim's single accept, and the PT's own connection is refused. Asking
// again with a new port recovers; the connection that took the shim is
// closed with the failed setup, and only the PT's connection is ever
// carried on.
const shimRetries = 5

func (h ptHop) logger() *slog.Logger {
	if h.log == nil {
		return slog.Default()
	}
	return h.log
}

// shimSetup is an external hop being set up over the hops outside it: two
// goroutines, one asking the PT over SOCKS to connect to the shim, one
// accepting that connection, dialling the hops outside and piping between
// the two at once (the PT may need the hops outside for its own handshake
// before it grants).
type shimSetup struct {
	hop           ptHop
	proxy, target string // the PT, and the shim it is asked to reach
	start         time.Time
	cancel        context.CancelFunc
	accepted      chan struct{}    // closed when the PT connected to the shim
	acceptedFrom  net.Addr         // who connected, set before accepted closes
	stray         bool             // what connected is not the PT's: set by wait
	asked         chan askResult   // the PT's SOCKS reply
	outer         chan outerResult // the shim's side
}

type askResult struct {
	conn *net.TCPConn
	err  error
}

type outerResult struct {
	pipe *hopPipe // between the PT's connection to the shim and the hops outside
	err  error
}

func newShimSetup(ctx context.Context, h ptHop, l *shim.OneUse, user, pass []byte, addr string, under transport.DialFunc, start time.Time) *shimSetup {
	ctx, cancel := context.WithCancel(ctx)
	proxy := h.proxy
	s := &shimSetup{hop: h, proxy: proxy, target: l.Addr().String(), start: start, cancel: cancel,
		accepted: make(chan struct{}), asked: make(chan askResult, 1), outer: make(chan outerResult, 1)}
	go func() {
		conn, err := shim.DialSOCKS5(ctx, proxy, s.target, user, pass)
		s.asked <- askResult{conn, err}
	}()
	go func() { s.outer <- s.acceptAndDial(ctx, l, addr, under) }()
	return s
}

// acceptAndDial takes the PT's one connection to the shim, dials the hops
// outside to addr, and pipes between them.
func (s *shimSetup) acceptAndDial(ctx context.Context, l *shim.OneUse, addr string, under transport.DialFunc) outerResult {
	in, err := l.Accept(ctx) // closes l
	if err != nil {
		if isTimeout(err) { // the listener's deadline is the setup's, and may fire first
			err = s.neverConnected()
		}
		return outerResult{err: err}
	}
	s.acceptedFrom = in.RemoteAddr()
	close(s.accepted)
	out, err := under(ctx, addr)
	if err != nil {
		in.Close()
		return outerResult{err: err}
	}
	return outerResult{pipe: s.hop.startPipe(in, out)}
}

// neverConnected is the error of a PT that was asked to reach the shim and
// did not in the time the setup allowed.
func (s *shimSetup) neverConnected() error {
	return &askedError{proxy: s.proxy, target: s.target, err: fmt.Errorf(
		"it never connected to that shim in %v (a PT that does not connect to the address it is given must be the last hop, see docs/client.md): %w",
		time.Since(s.start).Round(time.Millisecond), context.DeadlineExceeded)}
}

// wait returns both sides once both are set up, or the error to report:
// the hops outside's when they failed (this PT failing as a consequence,
// or reporting first, within failureGrace), else this PT's. A PT that
// never connected to the shim is named so, over its own SOCKS timeout.
// On error everything either side opened is closed.
func (s *shimSetup) wait() (ask askResult, out outerResult, err error) {
	gotAsk, gotOut := false, false
	var grace <-chan time.Time
	for err == nil && !(gotAsk && gotOut) {
		select {
		case ask = <-s.asked:
			gotAsk = true
			switch {
			case ask.err == nil:
			case gotOut || !s.wasAccepted():
				err = s.askFailed(ask.err)
			default: // the hops outside are still being set up
				t := time.NewTimer(failureGrace)
				defer t.Stop()
				grace = t.C
			}
		case out = <-s.outer:
			gotOut = true
			switch {
			case out.err != nil:
				err = out.err
			case gotAsk && ask.err != nil:
				err = s.askFailed(ask.err)
			}
		case <-grace:
			err = s.askFailed(ask.err)
		}
	}
	s.cancel()
	if err == nil {
		return ask, out, nil
	}
	if !gotAsk {
		ask = <-s.asked
	}
	if !gotOut {
		out = <-s.outer
	}
	if ask.err != nil && out.pipe != nil { // while what the shim accepted is open
		s.stray = s.notThePT()
	}
	if ask.conn != nil {
		ask.conn.Close()
	}
	if out.pipe != nil {
		out.pipe.cancel() // closes both its ends
	}
	return askResult{}, outerResult{}, err
}

// askFailed is this PT's own failure: a SOCKS timeout before it ever
// connected says that it never did.
func (s *shimSetup) askFailed(err error) error {
	if !s.wasAccepted() && isTimeout(err) {
		return s.neverConnected()
	}
	return &askedError{proxy: s.proxy, target: s.target, err: withElapsed(err, s.start)}
}

// taken says whether err is this PT's failure to reach its shim because
// another connection took it: the PT says it was refused (the shim
// listened from before the PT was asked until it accepted one
// connection, so only a connection that came first explains that), or it
// failed otherwise (obfs4proxy answers 0x01 for any error) and what the
// shim accepted is provably not the PT's.
func (s *shimSetup) taken(err error) bool {
	var asked *askedError
	if !errors.As(err, &asked) || asked.target != s.target {
		return false
	}
	var reply *shim.ReplyError
	return s.stray || errors.As(err, &reply) && reply.Code == shim.RepConnectionRefused
}

// notThePT says whether the connection the shim accepted is provably not
// the PT's: its other end is an open socket that neither the PT nor a
// process of its own holds. Only a managed PT's process is known, and
// only Linux's /proc tells; where either is missing, it is not proven.
func (s *shimSetup) notThePT() bool {
	from, ok := s.acceptedFrom.(*net.TCPAddr)
	if s.hop.pid <= 0 || !ok {
		return false
	}
	shimAddr, err := netip.ParseAddrPort(s.target)
	if err != nil {
		return false
	}
	owned, known := procstat.SocketOwner(s.hop.pid, from.AddrPort(), shimAddr)
	return known && !owned
}

// strayFrom is the address of the connection that took the shim, when
// one was accepted.
func (s *shimSetup) strayFrom() string {
	if s.wasAccepted() && s.acceptedFrom != nil {
		return s.acceptedFrom.String()
	}
	return "unknown"
}

func (s *shimSetup) wasAccepted() bool {
	select {
	case <-s.accepted:
		return true
	default:
		return false
	}
}

// isTimeout reports an error of a deadline: the setup's, or a socket's.
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// hopPipe is the pipe between a PT's connection to its shim and the hops
// outside; closing the hop's conn gives it the linger to drain.
type hopPipe struct {
	cancel context.CancelFunc // ends the pipe, closing both its ends
	linger time.Duration

	mu    sync.Mutex
	timer *time.Timer // the linger, once the hop's conn is closed
	ended bool
}

// startPipe pipes in, a PT's connection to its shim, to out, the hops
// outside it, until both directions end, the hop's connection has been
// closed for longer than the linger, or the client closes.
func (h ptHop) startPipe(in *net.TCPConn, out net.Conn) *hopPipe {
	ctx, cancel := context.WithCancel(h.life)
	p := &hopPipe{cancel: cancel, linger: h.linger}
	h.pipes.Add(1)
	go func() {
		defer h.pipes.Done()
		defer p.end()
		pipe(ctx, in, out, nil, nil)
	}()
	return p
}

// closed starts the linger: the pipe ends by itself when the PT closes
// its side, and is ended when the linger is over.
func (p *hopPipe) closed() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ended && p.timer == nil {
		p.timer = time.AfterFunc(p.linger, p.cancel)
	}
}

// end releases the pipe's context and its linger timer.
func (p *hopPipe) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ended = true
	if p.timer != nil {
		p.timer.Stop()
	}
	p.cancel()
}

// ptConn is a hop's connection to its PT, granted: a transport.Conn.
type ptConn struct {
	*net.TCPConn
	pipe    *hopPipe // nil for a PT that reaches the network itself
	setup   time.Duration
	read    atomic.Int64
	written atomic.Int64
}

var _ transport.Conn = (*ptConn)(nil)

func (h ptHop) newConn(c *net.TCPConn, start time.Time, p *hopPipe) *ptConn {
	return &ptConn{TCPConn: c, pipe: p, setup: time.Since(start)}
}

func (c *ptConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c *ptConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// WriteBuffers writes v in one system call (writev).
func (c *ptConn) WriteBuffers(v [][]byte) (int, error) {
	n, err := shim.WriteBuffers(c.TCPConn, v)
	c.written.Add(int64(n))
	return n, err
}

// Close closes the connection to the PT and lets the pipe behind it drain
// for at most the linger.
func (c *ptConn) Close() error {
	err := c.TCPConn.Close()
	if c.pipe != nil {
		c.pipe.closed()
	}
	return err
}

func (c *ptConn) Stats() transport.Stats {
	return transport.Stats{Read: c.read.Load(), Written: c.written.Load(), Setup: c.setup}
}

// tcp is the TCP connection beneath, for splicing.
func (c *ptConn) tcp() *net.TCPConn { return c.TCPConn }
