package chain

import (
	"errors"
	"net"
	"sync"
)

// torLeg is one chain connection's stream towards tor, dialled (with its
// Extended ORPort handshake) while the innermost hop's PT still does its own
// handshake, so that the two overlap: a client's connection is set up one
// handshake with tor faster (docs/performance.md, "One hop's setup"). It is
// begun for a real client's connection, never ahead of one: when the
// client's first bytes have gone into the innermost child (or an
// in-process innermost hop starts its handshake), or at the latest when
// the stream comes back from the child (take). Tor sees an Extended ORPort
// connection for a client that has connected and sent bytes, and no byte of
// the client's goes to it until the innermost hop has handed the stream
// over. A leg that is never taken (the client was a prober, or its PT
// handshake failed) is closed unused.
type torLeg struct {
	s     *Server
	c     *serverConn
	start sync.Once
	done  chan struct{} // closed when the dial has returned

	conn    *net.TCPConn // set before done is closed
	release func()
	err     error

	mu        sync.Mutex
	taken     bool
	abandoned bool
	dialling  bool
}

var errLegAbandoned = errors.New("the client's connection ended before its stream reached tor")

// newTorLeg gives c a leg towards tor, not begun yet, unless the streams
// do not go to tor (ServerOptions.Streams) or it has one.
func (s *Server) newTorLeg(c *serverConn) {
	if s.opt.Streams != nil || c.tor != nil {
		return
	}
	c.tor = &torLeg{s: s, c: c, done: make(chan struct{})}
}

// begin starts the dial, once, unless the leg was abandoned. It may be
// called from any of the connection's goroutines (each holds the server's
// wait group while it runs).
func (l *torLeg) begin() {
	l.start.Do(func() {
		l.mu.Lock()
		if l.abandoned {
			l.mu.Unlock()
			return
		}
		l.dialling = true
		l.mu.Unlock()
		l.s.wg.Add(1)
		go l.dial()
	})
}

func (l *torLeg) dial() {
	defer l.s.wg.Done()
	l.conn, l.release, l.err = l.s.dialTor(l.c)
	close(l.done)
	l.mu.Lock()
	abandoned := l.abandoned
	l.mu.Unlock()
	if abandoned {
		l.drop()
	}
}

// take begins the leg if nothing has, waits for its dial and hands its
// stream over to the caller, who then owns it (and its release).
func (l *torLeg) take() (*net.TCPConn, func(), error) {
	l.mu.Lock()
	if l.abandoned {
		l.mu.Unlock()
		return nil, nil, errLegAbandoned
	}
	l.taken = true
	l.mu.Unlock()
	l.begin()
	<-l.done
	return l.conn, l.release, l.err
}

// abandon closes the leg unless take has it: at once when its dial has
// returned, else when it returns; a leg not begun never will be.
func (l *torLeg) abandon() {
	l.mu.Lock()
	if l.taken || l.abandoned {
		l.mu.Unlock()
		return
	}
	l.abandoned = true
	dialling := l.dialling
	l.mu.Unlock()
	if !dialling {
		return
	}
	select {
	case <-l.done:
		l.drop()
	default: // dial drops it when it returns
	}
}

// drop closes an abandoned leg's stream, if its dial made one. abandon and
// dial may both call it (each can see the other's step done); the first
// closes.
func (l *torLeg) drop() {
	l.mu.Lock()
	conn, release := l.conn, l.release
	l.conn, l.release = nil, nil
	l.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	if release != nil {
		release()
	}
}
