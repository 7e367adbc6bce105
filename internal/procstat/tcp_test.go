package procstat

import (
	"net"
	"net/netip"
	"slices"
	"testing"
)

func TestEstablishedTo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := c.LocalAddr().(*net.TCPAddr).AddrPort()
	got := EstablishedTo(ln.Addr().(*net.TCPAddr).AddrPort())
	if !slices.Equal(got, []netip.AddrPort{want}) {
		t.Errorf("EstablishedTo(%v) = %v, want [%v] (the dialler, not the accepted side)", ln.Addr(), got, want)
	}
}
