package transport

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultHandshakeTimeout bounds a server handshake when ListenConfig does
// not say otherwise.
const DefaultHandshakeTimeout = 60 * time.Second

// ListenConfig configures a Listener; its zero value is ready to use.
type ListenConfig struct {
	// HandshakeTimeout bounds each connection's WrapConn. 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// OnError, when set, hears every failed handshake, with the remote
	// address of the connection. It runs in the handshake's goroutine.
	OnError func(remote net.Addr, err error)
}

// Listen is ListenConfig{}.Listen.
func Listen(srv Server, ln net.Listener) *Listener { return ListenConfig{}.Listen(srv, ln) }

// Listen serves srv on ln: it accepts connections, runs srv's handshake on
// each in its own goroutine (never inside Accept), and hands out the
// connections whose handshake succeeded. The Listener owns ln.
func (lc ListenConfig) Listen(srv Server, ln net.Listener) *Listener {
	if lc.HandshakeTimeout <= 0 {
		lc.HandshakeTimeout = DefaultHandshakeTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{cfg: lc, srv: srv, ln: ln, ctx: ctx, cancel: cancel,
		ready: make(chan Conn), acceptDone: make(chan struct{})}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Listener is a net.Listener whose Accept returns connections that have
// passed a server's handshake, each a [Conn]; it is also the seed's server
// manager ([Manager]).
type Listener struct {
	cfg    ListenConfig
	srv    Server
	ln     net.Listener
	ctx    context.Context // cancelled by Close: ends every handshake
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and the handshakes

	ready      chan Conn
	acceptDone chan struct{} // closed when the accept loop ends
	acceptErr  error         // why; set before acceptDone is closed

	closeOnce sync.Once
	closeErr  error

	accepted, failed, open, read, written atomic.Int64
}

var (
	_ net.Listener = (*Listener)(nil)
	_ Manager      = (*Listener)(nil)
)

// Accept returns the next connection whose handshake succeeded. After
// Close, or when the listener beneath fails, it returns an error.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.acceptDone:
		select { // a connection that made it before the end still counts
		case c := <-l.ready:
			return c, nil
		default:
		}
		return nil, l.acceptErr
	}
}

// Addr is the address of the listener beneath.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting, ends the handshakes in progress and waits for
// them. The connections already handed out stay open: they are the
// caller's.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.closeErr = l.ln.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// Stats reports the listener's counters.
func (l *Listener) Stats() ServerStats {
	return ServerStats{Accepted: l.accepted.Load(), Failed: l.failed.Load(), Open: l.open.Load(),
		Read: l.read.Load(), Written: l.written.Load()}
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if l.ctx.Err() == nil && isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-l.ctx.Done():
				}
			}
			if l.ctx.Err() != nil {
				err = net.ErrClosed
			}
			l.acceptErr = err
			close(l.acceptDone)
			return
		}
		backoff = 0
		l.accepted.Add(1)
		l.wg.Add(1)
		go l.handshake(raw)
	}
}

// isTemporary reports an accept error worth retrying: out of descriptors,
// a connection reset before it was accepted.
func isTemporary(err error) bool {
	var ne interface{ Temporary() bool }
	return errors.As(err, &ne) && ne.Temporary()
}

func (l *Listener) handshake(raw net.Conn) {
	defer l.wg.Done()
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
	defer cancel()
	c, err := l.srv.WrapConn(ctx, raw)
	if err != nil {
		l.failed.Add(1)
		if l.cfg.OnError != nil {
			l.cfg.OnError(raw.RemoteAddr(), err)
		}
		return
	}
	l.open.Add(1)
	sc := &servedConn{Conn: c, l: l}
	select {
	case l.ready <- sc:
	case <-l.ctx.Done():
		sc.Close()
	}
}

// servedConn is a connection a Listener handed out: it adds to the
// listener's counters.
type servedConn struct {
	Conn
	l         *Listener
	closeOnce sync.Once
}

var (
	_ closeWriter = (*servedConn)(nil)
	_ stacked     = (*servedConn)(nil)
)

func (c *servedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.read.Add(int64(n))
	return n, err
}

func (c *servedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.l.written.Add(int64(n))
	return n, err
}

func (c *servedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.l.open.Add(-1) })
	return err
}

func (c *servedConn) CloseWrite() error { return closeWrite(c.Conn) }
func (c *servedConn) rawConn() net.Conn { return rawOf(c.Conn) }
