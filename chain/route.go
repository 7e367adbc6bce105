package chain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// route is one connection's way through a chain: the dialer of each hop,
// innermost first, and each hop's arguments.
type route struct {
	alias  string
	bridge string // the chain's destination
	hops   []hop
	args   []metadata.Args
	// network is what the outermost hop runs over: nil for a PT, which
	// reaches the network itself; tor's proxy or Direct for an in-process
	// hop; the caller's under when the chain is itself a hop.
	network transport.DialFunc
}

// hop is the dialer serving one position of a chain.
type hop struct {
	transport.Dialer
	method  string
	program string // the PT program, "unmanaged PT" or "in-process"
	pt      bool   // reached over SOCKS: its arguments must fit SOCKS5
}

// Dial sets up one connection through the chain named name to target (the
// bridge), with args in tor's per-connection form (N.key for hop N only).
// Cancelling ctx abandons the setup; it does not end an established
// connection.
func (c *Client) Dial(ctx context.Context, name, target string, args metadata.Args) (*Conn, error) {
	return c.dial(ctx, name, target, args, nil)
}

// dial is Dial over under (nil: the network), observed.
func (c *Client) dial(ctx context.Context, name, target string, args metadata.Args, under transport.DialFunc) (*Conn, error) {
	o := c.opt.Observer
	if o == nil {
		return c.dialChain(ctx, name, target, args, under)
	}
	o.ConnOpened(name)
	conn, err := c.dialChain(ctx, name, target, args, under)
	observeDial(o, name, conn, err)
	return conn, err
}

func (c *Client) dialChain(ctx context.Context, name, target string, args metadata.Args, under transport.DialFunc) (*Conn, error) {
	start := time.Now()
	r, err := c.plan(ctx, name, target, args, under)
	if err != nil {
		return nil, err
	}
	if err := c.enter(); err != nil {
		return nil, &HopError{Alias: name, Hop: -1, Err: err}
	}
	defer c.conns.Done()
	setup, endSetup := context.WithTimeout(c.ctx, c.opt.SetupTimeout)
	defer endSetup()
	stopCaller := context.AfterFunc(ctx, endSetup)
	defer stopCaller()
	inner, err := r.dial(setup, 0, target)
	if err != nil {
		if cause := c.abandoned(ctx, start); cause != nil {
			return nil, &HopError{Alias: name, Hop: -1, Err: cause}
		}
		return nil, err
	}
	conn := &Conn{inner: inner, client: c, alias: name, setup: time.Since(start)}
	if err := c.track(conn); err != nil {
		inner.Close()
		return nil, &HopError{Alias: name, Hop: -1, Err: err}
	}
	return conn, nil
}

// dial sets up hop i to addr over what under(i) says comes next.
func (r *route) dial(ctx context.Context, i int, addr string) (net.Conn, error) {
	conn, err := r.hops[i].Dial(ctx, r.args[i], addr, r.under(i))
	if err != nil {
		return nil, r.hopError(i, err)
	}
	return conn, nil
}

// under says what hop i runs over: the next hop outward, set up when hop i
// asks for it (a PT when it connects to its shim, an in-process hop at
// once), or, for the outermost hop, the network.
func (r *route) under(i int) transport.DialFunc {
	if i == len(r.hops)-1 {
		return r.network
	}
	return func(ctx context.Context, addr string) (net.Conn, error) { return r.dial(ctx, i+1, addr) }
}

// hopError names the hop that failed. A hop fails as a consequence when
// the hops outside it fail: their error, already named, is the cause.
func (r *route) hopError(i int, err error) error {
	var outer *HopError
	if errors.As(err, &outer) {
		return outer
	}
	h := r.hops[i]
	e := &HopError{Alias: r.alias, Hop: i, Method: h.method, Bridge: r.bridge, Err: err}
	var asked *askedError
	switch {
	case errors.As(err, &asked):
		e.Program, e.Proxy, e.Target, e.Err = h.program, asked.proxy, asked.target, asked.err
	case !h.pt:
		e.Program, e.Target = h.program, r.bridge
	}
	return e
}

// plan finds the dialer of each hop of the chain name, starting what it
// needs, and splits args among the hops.
func (c *Client) plan(ctx context.Context, name, target string, args metadata.Args, under transport.DialFunc) (*route, error) {
	ch, ok := c.opt.Config.Lookup(name)
	if !ok {
		return nil, &HopError{Alias: name, Hop: -1, Err: errors.New("no such chain")}
	}
	if err := c.opt.Config.CheckPlacement(ch); err != nil {
		return nil, &HopError{Alias: name, Hop: -1, Err: err}
	}
	perHop, err := metadata.SplitHops(args, len(ch.Hops))
	if err != nil {
		return nil, &HopError{Alias: name, Hop: -1, Err: err}
	}
	r := &route{alias: name, bridge: target, args: perHop, network: under}
	for i, m := range ch.Hops {
		h, err := c.hop(ctx, ch, i, under == nil)
		if err != nil {
			err = downError{err}
		} else if h.pt {
			_, _, err = socksCredentials(perHop[i]) // refused before any hop is asked
		}
		if err != nil {
			return nil, &HopError{Alias: name, Hop: i, Method: m, Err: err}
		}
		r.hops = append(r.hops, h)
	}
	if under == nil && !r.hops[len(r.hops)-1].pt {
		if r.network, err = c.network(); err != nil {
			return nil, &HopError{Alias: name, Hop: len(r.hops) - 1, Method: ch.Hops[len(r.hops)-1], Err: err}
		}
	}
	return r, nil
}

// Conn is an established chained connection, carried by its innermost
// hop: a transport.Conn, whose Stats count the application's bytes and
// the whole chain's setup time. Close it to release the chain.
type Conn struct {
	inner   net.Conn // the innermost hop's connection
	client  *Client
	alias   string
	setup   time.Duration
	read    atomic.Int64
	written atomic.Int64
	once    sync.Once
}

var _ transport.Conn = (*Conn)(nil)

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.inner.Read(b)
	c.got(int64(n))
	return n, err
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.inner.Write(b)
	c.wrote(int64(n))
	return n, err
}

// WriteBuffers writes v as one write (shim.WriteBuffers): one system
// call when the innermost hop is a PT.
func (c *Conn) WriteBuffers(v [][]byte) (int, error) {
	n, err := shim.WriteBuffers(c.inner, v)
	c.wrote(int64(n))
	return n, err
}

// got and wrote count the application's bytes, for Stats and the
// Observer.
func (c *Conn) got(n int64) {
	c.read.Add(n)
	if o := c.client.opt.Observer; o != nil && n > 0 {
		o.ConnBytes(c.alias, 0, n)
	}
}

func (c *Conn) wrote(n int64) {
	c.written.Add(n)
	if o := c.client.opt.Observer; o != nil && n > 0 {
		o.ConnBytes(c.alias, n, 0)
	}
}

// Close closes the innermost hop's connection; the hops outside it may
// drain for at most the Client's Linger before they are closed.
func (c *Conn) Close() error {
	err := c.inner.Close()
	c.once.Do(func() {
		c.client.untrack(c)
		if o := c.client.opt.Observer; o != nil {
			o.ConnClosed(c.alias)
		}
	})
	return err
}

// CloseWrite half-closes the connection, through every hop.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.inner.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("chain: a %T cannot half-close", c.inner)
}

func (c *Conn) LocalAddr() net.Addr                { return c.inner.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.inner.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.inner.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.inner.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.inner.SetWriteDeadline(t) }

// Stats reports the bytes the application read and wrote (spliced by
// ServeSOCKS or not, as they pass), and the setup time of the whole
// chain.
func (c *Conn) Stats() transport.Stats {
	return transport.Stats{Read: c.read.Load(), Written: c.written.Load(), Setup: c.setup}
}

// tcp is the TCP connection to the innermost PT, or nil when the innermost
// hop is in-process.
func (c *Conn) tcp() *net.TCPConn { return tcpOf(c.inner) }

// chainDialer is a chain of a Client as a transport.Dialer.
type chainDialer struct {
	c    *Client
	name string
}

// Transport returns the chain name (an alias, or a method as a one-hop
// chain) as a transport.Dialer, so that it can be a hop of another chain
// (transport.ClientChain). Its outermost hop runs over the under it is
// given: a PT through a shim, an in-process hop directly.
func (c *Client) Transport(name string) transport.Dialer { return chainDialer{c, name} }

func (d chainDialer) Dial(ctx context.Context, args metadata.Args, addr string, under transport.DialFunc) (transport.Conn, error) {
	conn, err := d.c.dial(ctx, d.name, addr, args, under)
	if err != nil {
		return nil, err
	}
	return conn, nil
}
