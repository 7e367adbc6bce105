package shim

import (
	"net"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// tcpPair returns the two ends of one loopback TCP connection; both are
// closed when the test ends.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- result{c, err}
	}()
	d, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	r := <-ch
	if err != nil || r.err != nil {
		if d != nil {
			d.Close()
		}
		if r.c != nil {
			r.c.Close()
		}
		t.Fatalf("loopback pair: dial %v, accept %v", err, r.err)
	}
	t.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c
}
