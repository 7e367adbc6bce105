package main

import (
	"net"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
)

// A sink that cannot be reached must give no connection at all: the relay
// closed a nil *net.TCPConn held in a net.Conn and panicked when it ran out
// of descriptors under -ref-public.
func TestDialOnwardUnreachableGivesNilConn(t *testing.T) {
	closed := closedAddr
	cookie := filepath.Join(t.TempDir(), "cookie")
	for _, target := range []string{"tor", closed} {
		c, err := dialOnward(target, closed, cookie, extorport.Meta{UserAddr: "192.0.2.1:1"})
		if err == nil || c != nil {
			t.Errorf("dialOnward(%q) to a closed port = %v, %v; want a nil connection and an error", target, c, err)
		}
	}
}

// flakyListener fails its first accepts as a process out of descriptors
// does, then hands out one connection, then reports itself closed.
type flakyListener struct {
	net.Listener
	failures int
	accepts  atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	switch n := int(l.accepts.Add(1)); {
	case n <= l.failures:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	case n == l.failures+1:
		a, _ := net.Pipe()
		return a, nil
	default:
		return nil, net.ErrClosed
	}
}

func TestServeEachOutlivesFailedAccepts(t *testing.T) {
	l := &flakyListener{failures: 3}
	handled := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		serveEach(l, func(c net.Conn) { handled <- c })
		close(done)
	}()
	select {
	case c := <-handled:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("serveEach stopped at the failed accepts: the connection after them was never handled")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("serveEach did not return once the listener closed")
	}
	if n := l.accepts.Load(); n != int32(l.failures)+2 {
		t.Errorf("serveEach called Accept %d times, want %d", n, l.failures+2)
	}
}
