package chain

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/shim"
)

// Observer hears what the engines do, for metrics (package
// internal/metrics serves them to Prometheus and to tor as STATUS lines).
// ClientOptions.Observer and ServerOptions.Observer are nil unless a
// program asks for metrics: then nothing is observed, at no cost. Its
// methods are called from many goroutines at once.
//
// A chained connection is opened once, then either fails once (at a hop,
// for a reason) or is established once, and is closed once; ConnBytes
// adds its payload bytes (the application's, each way, before any hop's
// framing) as they pass, many times over a connection's life. Hops are numbered as in N.key: 0 is the innermost, the one
// the application's bytes enter first, on both sides; NoHop and DestHop
// name what is not a hop.
type Observer interface {
	ConnOpened(chain string)
	ConnFailed(chain string, hop int, reason FailReason)
	ConnEstablished(chain string, setup time.Duration)
	ConnBytes(chain string, upstream, downstream int64)
	ConnClosed(chain string)
	// ChildEvent tells of a PT program's instance (child, as the logs name
	// it): EventStarted at every start, restarts included, EventRestarted,
	// EventExited (an exit that nobody asked for), EventRestartFailed.
	ChildEvent(program, child string, kind EventKind)
	// ExtORPort tells how an Extended ORPort exchange ended (server only):
	// with a child, on the Extended ORPort the server serves it, or with
	// tor, towards its Extended ORPort.
	ExtORPort(peer ExtORPeer, outcome ExtOROutcome)
}

// Hops that are not a hop of the chain, in ConnFailed.
const (
	NoHop   = -1 // no hop is to blame: bad arguments, the cap, the engine closing
	DestHop = -2 // the server's destination after hop 0: tor, or the TCP service
)

// EventStarted is a child's start, first or restart (Observer only; it
// is no Event).
const EventStarted EventKind = "started"

// FailReason says why a chained connection's setup failed. Its values
// are the ones below, a closed set.
type FailReason struct{ name string }

func (r FailReason) String() string { return r.name }

// The reasons of ConnFailed.
var (
	// ReasonDown: the hop's PT program is not running (it exited and is
	// being restarted, or could not start).
	ReasonDown = FailReason{"down"}
	// ReasonRefused: the hop refused the connection, or could not reach
	// what it was asked to (a SOCKS failure reply, a refused or reset
	// connection).
	ReasonRefused = FailReason{"refused"}
	// ReasonTimeout: a deadline passed (the setup's, a SOCKS reply's, a
	// child that never handed the connection on).
	ReasonTimeout = FailReason{"timeout"}
	// ReasonHandshake: a protocol exchange failed: an in-process
	// transport's handshake, an Extended ORPort exchange with tor.
	ReasonHandshake = FailReason{"handshake"}
	// ReasonClosed: the connection was closed while it was set up (by the
	// application, the client, a hop's program), or the engine is
	// stopping.
	ReasonClosed = FailReason{"closed"}
	// ReasonCap: refused by the connection cap (MaxConns).
	ReasonCap = FailReason{"cap"}
	// ReasonOther: anything else (bad arguments, a stamp collision).
	ReasonOther = FailReason{"other"}
)

// FailReasons lists every FailReason, for exporters that show zeros.
var FailReasons = []FailReason{ReasonDown, ReasonRefused, ReasonTimeout, ReasonHandshake, ReasonClosed, ReasonCap, ReasonOther}

// ExtORPeer is the other side of an Extended ORPort exchange.
type ExtORPeer struct{ name string }

func (p ExtORPeer) String() string { return p.name }

var (
	PeerChild = ExtORPeer{"child"} // a server child, on its Extended ORPort
	PeerTor   = ExtORPeer{"tor"}   // tor, on its Extended ORPort
)

// ExtOROutcome is how an Extended ORPort exchange ended.
type ExtOROutcome struct{ name string }

func (o ExtOROutcome) String() string { return o.name }

var (
	// ExtOK: authenticated, and OKAY sent (child) or received (tor).
	ExtOK = ExtOROutcome{"ok"}
	// ExtFailed: the exchange failed: authentication, the protocol, a
	// timeout, a peer that went away, a cookie file that cannot be read.
	ExtFailed = ExtOROutcome{"failed"}
	// ExtUnmatched: a child reported a connection the server never
	// dialled into it (or no usable USERADDR), and was denied.
	ExtUnmatched = ExtOROutcome{"unmatched"}
	// ExtDenied: a child that listens on the public address itself
	// reported a connection the server refuses (the chain is not served,
	// the cap, another TRANSPORT).
	ExtDenied = ExtOROutcome{"denied"}
)

// reasonOf classifies a setup error.
func reasonOf(err error) FailReason {
	var down downError
	var re *shim.ReplyError
	switch {
	case errors.As(err, &down):
		return ReasonDown
	case isTimeout(err):
		return ReasonTimeout
	case errors.As(err, &re), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return ReasonRefused
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE),
		errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled):
		return ReasonClosed
	case errors.As(err, new(*extorport.CookieFileError)):
		return ReasonHandshake
	}
	return ReasonOther
}

// handshakeReason classifies the error of an in-process hop's handshake:
// ReasonHandshake unless it says more.
func handshakeReason(err error) FailReason {
	if r := reasonOf(err); r != ReasonOther {
		return r
	}
	return ReasonHandshake
}

// errClientClosed is every setup's error once the client is closed.
var errClientClosed = errors.New("client is closed")

// downError is a hop whose PT program does not run.
type downError struct{ err error }

func (e downError) Error() string { return e.err.Error() }
func (e downError) Unwrap() error { return e.err }

// observeDial reports the end of a client setup: established, or failed
// (and so closed) at the hop the HopError names.
func observeDial(o Observer, name string, conn *Conn, err error) {
	if err == nil {
		o.ConnEstablished(name, conn.setup)
		return
	}
	hop, reason := NoHop, ReasonOther
	var he *HopError
	if errors.As(err, &he) {
		hop, reason = he.Hop, reasonOf(he.Err)
		switch {
		case hop < 0 && (errors.Is(he.Err, errClientClosed) || errors.Is(he.Err, context.Canceled)):
			reason = ReasonClosed
		case hop >= 0 && he.Program == "in-process":
			reason = handshakeReason(he.Err)
		}
	}
	o.ConnFailed(name, hop, reason)
	o.ConnClosed(name)
}

// clientChildName names a client's child in metrics: its program and its
// plugin line (0 first), "-proxied" for the instance that carries tor's
// upstream proxy.
func clientChildName(program string, key procKey) string {
	name := program + "#" + strconv.Itoa(key.plugin)
	if key.outer {
		name += "-proxied"
	}
	return name
}

// childObserver is what a supervisor calls at its child's events, or nil.
func childObserver(o Observer, program, child string) func(EventKind) {
	if o == nil {
		return nil
	}
	return func(k EventKind) { o.ChildEvent(program, child, k) }
}

// connWatch is what the server observes of one client connection: when
// it started, the hop its stream was last handed to, and whether its
// outcome (failed or established) is known.
type connWatch struct {
	start   time.Time
	at      atomic.Int32
	settled atomic.Bool
}

// watchConn reports a new client connection of c's chain and returns what
// reports its end: a connection closed before it was established or had
// failed failed, closed under it (by a client that went away, a hop's
// program that died), at the hop blame names.
func (s *Server) watchConn(c *serverConn) (end func()) {
	o := s.opt.Observer
	if o == nil {
		return func() {}
	}
	c.watch.start = time.Now()
	c.watch.at.Store(int32(len(c.chain.hops) - 1))
	o.ConnOpened(c.chain.alias)
	return func() {
		if !c.watch.settled.Load() {
			s.failed(c, s.blame(c), ReasonClosed)
		}
		o.ConnClosed(c.chain.alias)
	}
}

// blame is the hop to blame for c, closed during its setup: the outermost
// hop outside the one its stream was in whose program is down, or else
// that one. A child's death closes its sockets before its parent sees it
// exit, so it waits up to failureGrace for that.
func (s *Server) blame(c *serverConn) int {
	at := int(c.watch.at.Load())
	outermost := len(c.chain.hops) - 1
	deadline := time.Now().Add(failureGrace)
	for at < outermost {
		for pos := outermost; pos > at; pos-- {
			if ch := c.chain.hops[pos].child; ch != nil && ch.sup != nil && ch.sup.Pid() == 0 {
				return pos
			}
		}
		if time.Now().After(deadline) || s.ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return at
}

// capped reports a connection of chain alias refused by MaxConns.
func (s *Server) capped(alias string) {
	if o := s.opt.Observer; o != nil {
		o.ConnOpened(alias)
		o.ConnFailed(alias, NoHop, ReasonCap)
		o.ConnClosed(alias)
	}
}

// reached records that c's stream is now at hop pos.
func (s *Server) reached(c *serverConn, pos int) {
	if s.opt.Observer != nil {
		c.watch.at.Store(int32(pos))
	}
}

// failed reports c's failure at hop, unless its outcome is known already.
func (s *Server) failed(c *serverConn, hop int, r FailReason) {
	if o := s.opt.Observer; o != nil && c.watch.settled.CompareAndSwap(false, true) {
		o.ConnFailed(c.chain.alias, hop, r)
	}
}

// established reports that c's stream reached tor (or the TCP service).
func (s *Server) established(c *serverConn) {
	if o := s.opt.Observer; o != nil && c.watch.settled.CompareAndSwap(false, true) {
		o.ConnEstablished(c.chain.alias, time.Since(c.watch.start))
	}
}

// progress counts c's payload bytes as they pass, upstream (towards tor)
// or downstream; nil without an Observer.
func (s *Server) progress(c *serverConn, upstream bool) shim.Progress {
	o := s.opt.Observer
	switch {
	case o == nil:
		return nil
	case upstream:
		return func(n int64) { o.ConnBytes(c.chain.alias, n, 0) }
	}
	return func(n int64) { o.ConnBytes(c.chain.alias, 0, n) }
}

// counted is conn with its payload counted as it passes, for a stream
// handed to ServerOptions.Streams: what is read from it goes upstream
// (towards the service), what is written to it downstream. Without an
// Observer it is conn itself.
func (s *Server) counted(c *serverConn, conn net.Conn) net.Conn {
	if s.opt.Observer == nil {
		return conn
	}
	return &countedConn{Conn: conn, up: s.progress(c, true), down: s.progress(c, false)}
}

// countedConn is a net.Conn that tells its Progress functions the bytes
// read (up) and written (down).
type countedConn struct {
	net.Conn
	up, down shim.Progress
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.up(int64(n))
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.down(int64(n))
	}
	return n, err
}

// WriteBuffers writes v as one write (shim.WriteBuffers).
func (c *countedConn) WriteBuffers(v [][]byte) (int, error) {
	n, err := shim.WriteBuffers(c.Conn, v)
	if n > 0 {
		c.down(int64(n))
	}
	return n, err
}

// CloseWrite half-closes the stream where the conn beneath can.
func (c *countedConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return errors.ErrUnsupported
}

// extOR reports how an Extended ORPort exchange ended.
func (s *Server) extOR(peer ExtORPeer, outcome ExtOROutcome) {
	if o := s.opt.Observer; o != nil {
		o.ExtORPort(peer, outcome)
	}
}

// torFailed reports a failed dial to tor (or the TCP service): a failure
// at DestHop, and a failed Extended ORPort exchange unless tor's port was
// never reached.
func (s *Server) torFailed(c *serverConn, err error) {
	if s.opt.Observer == nil {
		return
	}
	var op *net.OpError
	reached := !(errors.As(err, &op) && op.Op == "dial")
	r := reasonOf(err)
	if s.opt.TorExtORPort != "" && reached {
		s.extOR(PeerTor, ExtFailed)
		if r == ReasonOther || r == ReasonClosed {
			r = ReasonHandshake
		}
	}
	s.failed(c, DestHop, r)
}

// torReached reports c's stream established at tor (or the TCP service).
func (s *Server) torReached(c *serverConn) {
	if s.opt.TorExtORPort != "" {
		s.extOR(PeerTor, ExtOK)
	}
	s.established(c)
}
