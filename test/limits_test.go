package test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// idleFlood opens n connections to addr that never finish a handshake
// (half send nothing, half a SOCKS5 greeting cut short) and closes them when
// the test ends.
func idleFlood(t *testing.T, addr string, n int) {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, eventCeiling)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		if i%2 == 1 {
			c.Write([]byte{0x05, 0x02})
		}
		conns = append(conns, c)
	}
}

// 2000 idle connections on the client's SOCKS port do not stop a real
// connection from completing.
func TestLimitsClientIdleFlood(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	echo := echoServer(t)
	bridge, args := serverChain(t, echo, testHops(2))
	c := startCombiner(t, []string{"t2"}, testpFlags()...)
	idleFlood(t, c.methods["t2"].Addr.String(), n)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.dial(ctx, "t2", bridge, args)
	if err != nil {
		t.Fatalf("a real connection behind %d idle ones: %v", n, err)
	}
	if err := roundTrip(t, conn, 100000); err != nil {
		t.Fatal(err)
	}
}

// 2000 idle connections on the server's public port do not stop a real
// connection from completing, nor its attribution.
func TestLimitsServerIdleFlood(t *testing.T) {
	n := 2000
	if testing.Short() {
		n = 300
	}
	ft := startFakeTor(t, "t2")
	sc := startServerCombiner(t, ft, []string{"t2"}, nil, "--plugin", "test="+bin("testpt"), "--chain", "t2=test|test")
	public := sc.methods["t2"].Addr.String()
	idleFlood(t, public, n)
	keys := []byte{90, 90}
	err := oneAttributed(public, func(conn *net.TCPConn) (io.ReadWriter, error) { return newTestptStream(conn, keys) }, 100000)
	if err != nil {
		t.Fatalf("a real connection behind %d idle ones: %v", n, err)
	}
	ft.check(t, 1)
}

// With --max-conns, connections over the cap are closed at once and the
// ones under it work.
func TestLimitsMaxConns(t *testing.T) {
	c := startCombiner(t, []string{"t2"}, append(testpFlags(), "--max-conns", "10")...)
	baseline := fdCount(c.proc.Pid())
	idleFlood(t, c.methods["t2"].Addr.String(), 10)
	// The combiner has taken the ten in (accepted: a socket each) before
	// the eleventh comes.
	waitFor(t, "the combiner to accept the 10 idle connections", eventCeiling, func() bool { return fdCount(c.proc.Pid()) >= baseline+10 })
	over, err := net.Dial("tcp", c.methods["t2"].Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(eventCeiling))
	if _, err := over.Read(make([]byte, 1)); err == nil {
		t.Error("a connection over the cap got data")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("a connection over the cap was kept open")
	}
}
