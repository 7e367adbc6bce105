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

// A line the kernel wrote twice (a socket shifted across a page boundary
// while the file was read) is one socket.
func TestEstablishedToListsASocketOnce(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:DB60 0100007F:9BED 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1
   1: 0100007F:DB60 0100007F:9BED 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:DB61 0100007F:9BED 06 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	got := establishedTo(table, netip.MustParseAddrPort("127.0.0.1:39917"))
	if want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:56160")}; !slices.Equal(got, want) {
		t.Errorf("establishedTo = %v, want %v", got, want)
	}
}
