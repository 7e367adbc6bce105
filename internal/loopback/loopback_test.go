package loopback

import (
	"net"
	"testing"
	"time"
)

func TestKeepAlive(t *testing.T) {
	for addr, want := range map[string]time.Duration{
		"127.0.0.1:9":          -1,
		"127.1.2.3:9":          -1,
		"[::1]:9":              -1,
		"[::ffff:127.0.0.1]:9": -1,
		"192.0.2.1:443":        0,
		"[2001:db8::1]:443":    0,
		"0.0.0.0:0":            0,
		"localhost:9":          0, // a name may resolve anywhere
		"garbage":              0,
	} {
		if got := KeepAlive(addr); got != want {
			t.Errorf("KeepAlive(%q) = %v, want %v", addr, got, want)
		}
	}
}

// probing is Probing, failing t on error.
func probing(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	on, err := Probing(c)
	if err != nil {
		t.Fatal(err)
	}
	return on
}

// TestLoopbackSocketsHaveNoKeepAlive: both ends of a loopback connection
// opened with Dialer and ListenTCP go without keepalive, where Go's
// defaults turn it on (the control, so that the test reads the option right).
func TestLoopbackSocketsHaveNoKeepAlive(t *testing.T) {
	ln, err := ListenTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	plain, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	pair := func(ln *net.TCPListener, d *net.Dialer) (dialled, accepted *net.TCPConn) {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); a.Close() })
		return c.(*net.TCPConn), a
	}
	c, a := pair(ln, Dialer(ln.Addr().String()))
	if probing(t, c) || probing(t, a) {
		t.Errorf("keepalive on: dialled %v, accepted %v; want off on both", probing(t, c), probing(t, a))
	}
	c, a = pair(plain, &net.Dialer{})
	if !probing(t, c) || !probing(t, a) {
		t.Errorf("control: Go's defaults gave keepalive dialled %v, accepted %v; want on on both", probing(t, c), probing(t, a))
	}
}
