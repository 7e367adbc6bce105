package transport

import (
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// closeWriter is a connection that can half-close: *net.TCPConn and every
// Conn of this package.
type closeWriter interface{ CloseWrite() error }

// stacked is a connection of this package that runs, through zero or more
// hops, over a raw connection; deadlines go to that one.
type stacked interface{ rawConn() net.Conn }

// rawOf returns the raw connection at the bottom of c's stack, or c itself.
func rawOf(c net.Conn) net.Conn {
	if s, ok := c.(stacked); ok {
		return s.rawConn()
	}
	return c
}

// closeWrite half-closes c, or says why it cannot.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("transport: a %T cannot half-close", c)
}

// conn is how a hop of this package hands out a transport's connection:
// it counts the application's bytes, sends deadlines to the raw connection
// (the module's obfs4 and scramblesuit connections refuse them; see the
// package doc) and half-closes through the hop beneath when the transport
// cannot itself.
type conn struct {
	net.Conn          // the transport's connection
	lower    net.Conn // the connection it runs over
	raw      net.Conn // the raw connection at the bottom of the stack
	setup    time.Duration
	read     atomic.Int64
	written  atomic.Int64
}

var (
	_ Conn        = (*conn)(nil)
	_ closeWriter = (*conn)(nil)
	_ stacked     = (*conn)(nil)
)

// newConn wraps c, a transport's connection over lower, set up since start.
func newConn(c, lower net.Conn, start time.Time) *conn {
	return &conn{Conn: c, lower: lower, raw: rawOf(lower), setup: time.Since(start)}
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// CloseWrite half-closes the transport's connection, or, when it cannot
// (the module's connections write every byte through at once and have no
// close frame), the connection beneath, down to the raw one.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return closeWrite(c.lower)
}

func (c *conn) rawConn() net.Conn { return c.raw }

func (c *conn) Stats() Stats {
	return Stats{Read: c.read.Load(), Written: c.written.Load(), Setup: c.setup}
}

// setupConn is a Conn whose setup covers more than its own hop: a whole
// chain's.
type setupConn struct {
	Conn
	setup time.Duration
}

var (
	_ closeWriter = setupConn{}
	_ stacked     = setupConn{}
)

func (c setupConn) CloseWrite() error { return closeWrite(c.Conn) }
func (c setupConn) rawConn() net.Conn { return rawOf(c.Conn) }

func (c setupConn) Stats() Stats {
	s := c.Conn.Stats()
	s.Setup = c.setup
	return s
}
