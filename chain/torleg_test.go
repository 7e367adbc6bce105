package chain

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// orderTor is a tor stand-in that records each Extended ORPort connection
// as it is accepted (on accepted), before its handshake; then, as idTor,
// it checks that a stream's first line names its USERADDR and echoes the
// rest. It counts the streams that carried that line (streams, misattributed
// among them) and the connections that ended with no byte (unused).
type orderTor struct {
	addr, cookiePath string
	accepted         chan struct{} // one send per connection, buffered

	conns, streams, misattributed, unused atomic.Int64
}

func startOrderTor(t *testing.T) *orderTor {
	t.Helper()
	ot := &orderTor{accepted: make(chan struct{}, 16)}
	ot.addr, ot.cookiePath = serveTor(t, ot.serve)
	return ot
}

func (ot *orderTor) serve(c net.Conn, cookie []byte) {
	ot.conns.Add(1)
	ot.accepted <- struct{}{}
	meta, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie, Timeout: eventCeiling})
	if err != nil || extorport.Okay(c) != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(eventCeiling))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if line == "" && err == io.EOF {
		ot.unused.Add(1)
		return
	}
	ot.streams.Add(1)
	if line != "ID "+meta.UserAddr+"\n" {
		ot.misattributed.Add(1)
	}
	c.Write([]byte(line))
	io.Copy(c, br)
}

func (ot *orderTor) summary() string {
	return fmt.Sprintf("tor saw %d connections: %d streams (%d misattributed), %d unused",
		ot.conns.Load(), ot.streams.Load(), ot.misattributed.Load(), ot.unused.Load())
}

// The stream towards tor is begun while the innermost child still does its
// own handshake, not after the child has come back on its Extended ORPort:
// the client sends all of the test PT's header but its newline, so the
// child has read bytes (they went through ptcombiner-server) and cannot
// report the connection yet; tor must see the connection meanwhile. When
// the server dialled tor only once the child had reported, tor saw nothing
// until the header was complete, and this test waited in vain. The stream
// then carries the client's bytes, attributed to it, through the leg begun
// early.
func TestTorLegBegunBeforeChildArrives(t *testing.T) {
	tor := startOrderTor(t)
	ts := startTestServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath, HandshakeTimeout: eventCeiling},
		map[string]metadata.Args{"t1": {"key": {"21"}}}, "t1=test")
	raw, err := net.DialTimeout("tcp", ts.pubs["t1"].Addr.String(), eventCeiling)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(eventCeiling))
	c := &testptConn{conn: raw.(*net.TCPConn), key: 21}
	if _, err := c.conn.Write([]byte("TESTPT1 test 21")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tor.accepted:
	case <-time.After(eventCeiling):
		t.Fatalf("tor saw no connection while the child waited for the rest of its header (%d stamps pending)", ts.srv.PendingStamps())
	}
	if n := ts.srv.PendingStamps(); n != 1 {
		t.Fatalf("%d stamps pending when tor saw the connection, want 1: the child had not come back", n)
	}
	if _, err := c.conn.Write([]byte("\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.echo(c.idLine(), 1000); err != nil {
		t.Fatalf("through the leg begun early: %v (%s)", err, tor.summary())
	}
	if tor.conns.Load() != 1 || tor.streams.Load() != 1 || tor.misattributed.Load() != 0 {
		t.Errorf("%s", tor.summary())
	}
}

// A client that sends nothing makes no connection to tor; one whose bytes
// went into the child but that left before the child reported it (a
// prober, a PT handshake that failed) has its leg closed, unused.
func TestTorLegOnlyForClientsThatSend(t *testing.T) {
	tor := startOrderTor(t)
	ts := startTestServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath, HandshakeTimeout: eventCeiling},
		map[string]metadata.Args{"t1": {"key": {"21"}}}, "t1=test")
	addr := ts.pubs["t1"].Addr.String()

	silent, err := net.DialTimeout("tcp", addr, eventCeiling)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server's dial into the child", eventCeiling, func() bool { return ts.srv.PendingStamps() == 1 })
	silent.Close()
	waitFor(t, "the silent connection's end", eventCeiling, func() bool { return ts.srv.PendingStamps() == 0 })

	prober, err := net.DialTimeout("tcp", addr, eventCeiling)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prober.Write([]byte("TESTPT1 test")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tor.accepted:
	case <-time.After(eventCeiling):
		t.Fatal("tor saw no connection for a client whose bytes went into the child")
	}
	prober.Close()
	waitFor(t, "the prober's leg closed", eventCeiling, func() bool { return tor.unused.Load() == 1 })

	if err := attributed(addr, []byte{21}, 100, eventCeiling); err != nil {
		t.Fatal(err)
	}
	if tor.conns.Load() != 2 || tor.streams.Load() != 1 || tor.misattributed.Load() != 0 {
		t.Errorf("want 2 connections (the prober's, unused, and the client's; none for the silent client), 1 stream: %s", tor.summary())
	}
}

// abandon, take and begin in every order leave the leg's stream closed
// exactly when nobody took it.
func TestTorLegAbandonTake(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	var eofs atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if _, err := io.Copy(io.Discard, c); err == nil {
					eofs.Add(1)
				}
			}()
		}
	}()
	s := NewServer(ServerOptions{Config: &Config{}, TorORPort: ln.Addr().String()})
	defer s.Close()
	leg := func() *torLeg {
		c := &serverConn{chain: &serverChain{alias: "x"}}
		s.newTorLeg(c)
		return c.tor
	}

	l := leg() // abandoned before it begins: never dials
	l.abandon()
	l.begin()
	if _, _, err := l.take(); err != errLegAbandoned {
		t.Errorf("take after abandon: %v", err)
	}

	l = leg() // begun, then abandoned: closed
	l.begin()
	l.abandon()

	l = leg() // taken: the caller's, abandon does nothing
	l.begin()
	conn, release, err := l.take()
	if err != nil {
		t.Fatal(err)
	}
	l.abandon()
	if _, err := conn.Write([]byte("x")); err != nil {
		t.Errorf("a taken leg was closed by abandon: %v", err)
	}
	waitFor(t, "the abandoned leg's close", eventCeiling, func() bool { return eofs.Load() == 1 })
	conn.Close()
	release()
	waitFor(t, "the taken leg's close", eventCeiling, func() bool { return eofs.Load() == 2 })
}
