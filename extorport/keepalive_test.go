package extorport

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// TestDialLoopbackSendsNoKeepalive: Dial to an Extended ORPort on loopback
// (tor's, on the bridge's own host) opens no TCP keepalive
// (internal/loopback).
func TestDialLoopbackSendsNoKeepalive(t *testing.T) {
	path, cookie := cookieFile(t)
	addr, done := fakeServer(t, func(c *net.TCPConn) error {
		if _, err := ServerHandshake(c, ServerConfig{Cookie: cookie}); err != nil {
			return err
		}
		if err := Okay(c); err != nil {
			return err
		}
		c.Read(make([]byte, 1)) // until the client closes
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, ClientConfig{CookiePath: path}, Meta{UserAddr: "192.0.2.1:9", Transport: "obfs4"})
	if err != nil {
		t.Fatal(err)
	}
	if on, err := loopback.Probing(c); err != nil || on {
		t.Errorf("keepalive on %v (%v), want off", on, err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
