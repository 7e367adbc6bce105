package free

import (
	"net"
	"sync"
	"time"

	"github.com/xtaci/smux"
)

// muxConfig is the smux configuration of both ends. Protocol version 2
// gives every stream its own flow-control window (MaxStreamBuffer), so a
// stream whose reader is slow or gone stops its sender without stopping
// the others, as long as the streams' windows fit the session's shared
// receive buffer (16 streams stalled in full here); snowflake runs smux
// v2 with 1 MiB streams the same way. A session hears a frame at least
// every KeepAliveInterval from a live peer, and is closed after
// KeepAliveTimeout without one.
func muxConfig() *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2
	c.KeepAliveInterval = 10 * time.Second
	c.KeepAliveTimeout = 60 * time.Second
	c.MaxStreamBuffer = 1 << 20
	c.MaxReceiveBuffer = 16 << 20
	return c
}

// watchedConn is a session's connection; broken is closed at its first
// read or write error. smux does not close a session whose connection
// failed (its streams fail, and its Accept), so both ends watch for it.
type watchedConn struct {
	net.Conn
	once   sync.Once
	broken chan struct{}
	err    error // set before broken is closed
}

func watch(c net.Conn) *watchedConn { return &watchedConn{Conn: c, broken: make(chan struct{})} }

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.fail(err)
	}
	return n, err
}

func (c *watchedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.fail(err)
	}
	return n, err
}

func (c *watchedConn) fail(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.broken)
	})
}
