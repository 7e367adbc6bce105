package shim

import (
	"context"
	"net"
	"testing"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// TestLoopbackShimsSendNoKeepalive: the connection DialSOCKS5 opens to a
// PT's SOCKS port and the one a one-use shim accepts are loopback sockets
// without TCP keepalive: 10,000 held chained connections' probes came in
// bursts that overflowed the loopback backlog and dropped SYNs
// (internal/loopback, docs/performance.md).
func TestLoopbackShimsSendNoKeepalive(t *testing.T) {
	addr, _ := goptlibServer(t, func(c *pt.SocksConn) {
		c.Grant(nil)
		c.Read(make([]byte, 1)) // until the client closes
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialSOCKS5(ctx, addr, "192.0.2.1:443", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if on, err := loopback.Probing(c); err != nil || on {
		t.Errorf("DialSOCKS5's connection: keepalive on %v (%v), want off", on, err)
	}

	l, err := ListenOnce("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	in, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if on, err := loopback.Probing(in); err != nil || on {
		t.Errorf("one-use shim's connection: keepalive on %v (%v), want off", on, err)
	}
}
