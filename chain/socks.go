package chain

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
)

// DefaultRequestTimeout bounds reading an application's SOCKS request when
// SOCKSServer.RequestTimeout is 0.
const DefaultRequestTimeout = 10 * time.Second

// ErrServerClosed is returned by SOCKSServer's Serve and ServeTunnel after
// Shutdown or Close.
var ErrServerClosed = errors.New("chain: SOCKS server closed")

// SOCKSServer carries application connections through the chains of a
// Client. On a Serve listener an application speaks SOCKS5 as tor speaks
// to a PT (pt-spec 3.5): the CONNECT target is the bridge, and the chain's
// per-connection arguments (N.key for hop N) come as RFC 1929 username and
// password, split as tor splits them (metadata.SOCKS5Credentials). The
// request is granted once the whole chain is set up, or refused with the
// failing hop's reply code (HopError.ReplyCode). On a ServeTunnel listener
// every connection goes to one bridge with fixed arguments, without SOCKS.
// Its fields are read when it starts serving; do not change them after.
type SOCKSServer struct {
	Client *Client
	// RequestTimeout bounds reading a SOCKS request. 0:
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxConns caps the application connections open at once, over every
	// listener; further ones are closed at once. 0: no cap.
	MaxConns int
	Logger   *slog.Logger // nil: slog.Default()

	once      sync.Once
	ctx       context.Context // cancelled by Close: ends every connection
	cancel    context.CancelFunc
	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	closed    bool
	running   sync.WaitGroup // the Serve loops and the connections
	open      atomic.Int64
	capWarned atomic.Bool
}

func (s *SOCKSServer) init() {
	s.once.Do(func() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		if s.RequestTimeout <= 0 {
			s.RequestTimeout = DefaultRequestTimeout
		}
	})
}

// Serve accepts SOCKS5 connections on ln for the chain alias (an alias,
// or a method as a one-hop chain) until ln fails or the server is shut
// down, and closes ln. It returns ErrServerClosed after Shutdown or Close.
func (s *SOCKSServer) Serve(ln net.Listener, alias string) error {
	return s.serve(ln, func(conn net.Conn) { s.handleSOCKS(alias, conn) })
}

// ServeTunnel carries every connection accepted on ln through the chain
// alias to bridge, with args as the chain's arguments, until ln fails or
// the server is shut down, and closes ln.
func (s *SOCKSServer) ServeTunnel(ln net.Listener, alias, bridge string, args metadata.Args) error {
	return s.serve(ln, func(conn net.Conn) { s.handleTunnel(alias, bridge, args, conn) })
}

// ServeFunc runs handle on every connection accepted on ln, each in its
// own goroutine, under the server's lifecycle (MaxConns, Shutdown, Close:
// ctx ends when the server closes), until ln fails or the server is shut
// down, and closes ln. The connection is closed after handle returns. A
// free proxy (package free) serves its SOCKS5 listeners so.
func (s *SOCKSServer) ServeFunc(ln net.Listener, handle func(ctx context.Context, conn net.Conn)) error {
	return s.serve(ln, func(conn net.Conn) { handle(s.ctx, conn) })
}

// serve runs handle on every connection ln accepts, each in its own
// goroutine.
func (s *SOCKSServer) serve(ln net.Listener, handle func(net.Conn)) error {
	if !s.add(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.running.Done()
	defer s.remove(ln)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			s.Logger.Warn("accept", "listener", ln.Addr().String(), "err", err)
			time.Sleep(50 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		s.running.Add(1) // the Serve loop's own count is held: never from zero
		go func() {
			defer s.running.Done()
			defer conn.Close()
			if s.admit() {
				defer s.open.Add(-1)
				handle(conn)
			}
		}()
	}
}

// add registers a listener and its Serve loop, unless the server is closed.
func (s *SOCKSServer) add(ln net.Listener) bool {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners[ln] = struct{}{}
	s.running.Add(1)
	return true
}

func (s *SOCKSServer) remove(ln net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.listeners, ln)
	ln.Close()
}

func (s *SOCKSServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// admit counts a new connection, or refuses it over MaxConns.
func (s *SOCKSServer) admit() bool {
	n := s.open.Add(1)
	if s.MaxConns <= 0 || n <= int64(s.MaxConns) {
		return true
	}
	s.open.Add(-1)
	if s.capWarned.CompareAndSwap(false, true) {
		s.Logger.Warn("connection cap reached: closing new connections", "max_conns", s.MaxConns)
	}
	return false
}

// handleSOCKS reads an application's request, sets up its chain, and
// answers: granted once the chain is up, else refused with the failing
// hop's reply code.
func (s *SOCKSServer) handleSOCKS(alias string, conn net.Conn) {
	stop := context.AfterFunc(s.ctx, func() { conn.Close() }) // ends a pending handshake at Close
	defer stop()
	req, err := shim.ReadRequest(conn, s.RequestTimeout)
	if err != nil {
		s.Logger.Info("bad SOCKS request", "chain", alias, "err", err)
		return
	}
	cc, err := s.Client.Dial(s.ctx, alias, req.Target, req.Args)
	if err != nil {
		code := shim.ReplyCodeFor(err)
		var he *HopError
		if errors.As(err, &he) {
			code = he.ReplyCode()
		}
		s.Logger.Warn("chained connection failed", "err", err, "socks_reply", code)
		shim.Reject(conn, code)
		return
	}
	defer cc.Close()
	if err := shim.Grant(conn); err != nil {
		return
	}
	if err := cc.pipeTo(s.ctx, conn); err != nil {
		s.Logger.Debug("connection ended", "chain", alias, "err", err)
	}
}

// handleTunnel carries one plain connection through alias to bridge.
func (s *SOCKSServer) handleTunnel(alias, bridge string, args metadata.Args, conn net.Conn) {
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	cc, err := s.Client.Dial(s.ctx, alias, bridge, args)
	if err != nil {
		s.Logger.Warn("chained connection failed", "err", err)
		return
	}
	defer cc.Close()
	if err := cc.pipeTo(s.ctx, conn); err != nil {
		s.Logger.Debug("connection ended", "chain", alias, "err", err)
	}
}

// closeListeners stops every Serve loop from accepting.
func (s *SOCKSServer) closeListeners() {
	s.init()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
}

// Shutdown stops accepting and waits for the open connections to end by
// themselves; when ctx ends first, it closes them (Close) and returns
// ctx's error.
func (s *SOCKSServer) Shutdown(ctx context.Context) error {
	s.closeListeners()
	done := make(chan struct{})
	go func() {
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close stops accepting, ends every open connection and waits for them.
// The Client stays open: it is the caller's.
func (s *SOCKSServer) Close() error {
	s.closeListeners()
	s.cancel()
	s.running.Wait()
	return nil
}

// pipeTo joins the chained connection with app until both directions end
// (pipe), counting what passes as it passes, spliced past Read and Write
// or not.
func (c *Conn) pipeTo(ctx context.Context, app net.Conn) error {
	_, _, err := pipe(ctx, app, c, c.wrote, c.got)
	return err
}
