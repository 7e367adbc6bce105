package stun

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// listen starts a server on loopback, closed when the test ends.
func listen(t *testing.T) *Server {
	t.Helper()
	s, err := Listen(net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// client is one UDP socket that sends requests and reads the replies.
type client struct {
	t *testing.T
	c *net.UDPConn
}

func newClient(t *testing.T) *client {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t, c}
}

// roundTrip sends a Binding request with attrs to to and returns the reply
// and where it came from. The read deadline only keeps a broken server from
// hanging the test.
func (c *client) roundTrip(to *net.UDPAddr, typ uint16, attrs ...attr) (message, *net.UDPAddr) {
	c.t.Helper()
	var tid [12]byte
	rand.Read(tid[:])
	if _, err := c.c.WriteToUDP(build(typ, tid, attrs), to); err != nil {
		c.t.Fatal(err)
	}
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, maxMessageBytes)
	n, from, err := c.c.ReadFromUDP(buf)
	if err != nil {
		c.t.Fatal(err)
	}
	m, ok := parse(buf[:n])
	if !ok || m.tid != tid {
		c.t.Fatalf("reply % x is no STUN message for transaction % x", buf[:n], tid)
	}
	return m, from
}

func (m message) get(typ uint16) []byte {
	for _, a := range m.attrs {
		if a.typ == typ {
			return a.value
		}
	}
	return nil
}

// decodeAddress undoes address and xorAddress.
func decodeAddress(t *testing.T, b []byte, xor bool) *net.UDPAddr {
	t.Helper()
	if len(b) != 8 || b[1] != 0x01 {
		t.Fatalf("address attribute % x", b)
	}
	port, ip := binary.BigEndian.Uint16(b[2:4]), binary.BigEndian.Uint32(b[4:8])
	if xor {
		port ^= magicCookie >> 16
		ip ^= magicCookie
	}
	return &net.UDPAddr{IP: binary.BigEndian.AppendUint32(nil, ip), Port: int(port)}
}

func sameAddr(a, b *net.UDPAddr) bool { return a.IP.Equal(b.IP) && a.Port == b.Port }

// TestBindingNATDiscovery runs the two tests of snowflake's NAT check
// (RFC 5780 4.3, tests I and II) and the filtering test III.
func TestBindingNATDiscovery(t *testing.T) {
	s := listen(t)
	c := newClient(t)
	self := c.c.LocalAddr().(*net.UDPAddr)

	// Test I: XOR-MAPPED-ADDRESS is the client's own address, OTHER-ADDRESS
	// the alternate port, the reply comes from where it was sent.
	m, from := c.roundTrip(s.Addr(), bindingRequest)
	if m.typ != bindingSuccess || !sameAddr(from, s.Addr()) {
		t.Fatalf("reply type %#x from %v", m.typ, from)
	}
	if got := decodeAddress(t, m.get(attrXORMappedAddress), true); !sameAddr(got, self) {
		t.Errorf("XOR-MAPPED-ADDRESS %v, want %v", got, self)
	}
	if got := decodeAddress(t, m.get(attrMappedAddress), false); !sameAddr(got, self) {
		t.Errorf("MAPPED-ADDRESS %v, want %v", got, self)
	}
	other := decodeAddress(t, m.get(attrOtherAddress), false)
	if !sameAddr(other, s.OtherAddr()) || sameAddr(other, s.Addr()) {
		t.Fatalf("OTHER-ADDRESS %v, want %v", other, s.OtherAddr())
	}

	// Test II: to OTHER-ADDRESS, the same mapping ("unrestricted"), and
	// that socket names the primary one as its other.
	m, from = c.roundTrip(other, bindingRequest)
	if m.typ != bindingSuccess || !sameAddr(from, other) {
		t.Fatalf("reply type %#x from %v", m.typ, from)
	}
	if got := decodeAddress(t, m.get(attrXORMappedAddress), true); !sameAddr(got, self) {
		t.Errorf("XOR-MAPPED-ADDRESS from the other port %v, want %v", got, self)
	}
	if got := decodeAddress(t, m.get(attrOtherAddress), false); !sameAddr(got, s.Addr()) {
		t.Errorf("OTHER-ADDRESS of the alternate port %v, want %v", got, s.Addr())
	}

	// Test III: "change port" is answered from the other port, and says so.
	m, from = c.roundTrip(s.Addr(), bindingRequest, attr{attrChangeRequest, []byte{0, 0, 0, changePort}})
	if m.typ != bindingSuccess || !sameAddr(from, s.OtherAddr()) {
		t.Fatalf("change port: reply type %#x from %v, want from %v", m.typ, from, s.OtherAddr())
	}
	if got := decodeAddress(t, m.get(attrResponseOrigin), false); !sameAddr(got, s.OtherAddr()) {
		t.Errorf("RESPONSE-ORIGIN %v, want %v", got, s.OtherAddr())
	}
}

// TestRefusals: what the server cannot do is an error 420 naming the
// attribute; what is no Binding request gets no reply (the next request's
// reply is the first to come).
func TestRefusals(t *testing.T) {
	s := listen(t)
	c := newClient(t)
	for name, tc := range map[string]struct {
		attrs   []attr
		unknown uint16
	}{
		"change IP":                   {[]attr{{attrChangeRequest, []byte{0, 0, 0, changeIP}}}, attrChangeRequest},
		"comprehension-required 0x7F": {[]attr{{0x007F, []byte{1, 2, 3}}}, 0x007F},
	} {
		m, from := c.roundTrip(s.Addr(), bindingRequest, tc.attrs...)
		if m.typ != bindingError || !sameAddr(from, s.Addr()) {
			t.Errorf("%s: reply type %#x from %v", name, m.typ, from)
			continue
		}
		if ec := m.get(attrErrorCode); len(ec) < 4 || int(ec[2])*100+int(ec[3]) != 420 {
			t.Errorf("%s: ERROR-CODE % x", name, ec)
		}
		if u := m.get(attrUnknownAttributes); !bytes.Equal(u, binary.BigEndian.AppendUint16(nil, tc.unknown)) {
			t.Errorf("%s: UNKNOWN-ATTRIBUTES % x", name, u)
		}
	}
	// A comprehension-optional attribute (FINGERPRINT, 0x8028) is ignored.
	if m, _ := c.roundTrip(s.Addr(), bindingRequest, attr{0x8028, []byte{1, 2, 3, 4}}); m.typ != bindingSuccess {
		t.Errorf("comprehension-optional attribute: reply type %#x", m.typ)
	}

	for _, junk := range [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), build(0x0011, [12]byte{}, nil), make([]byte, 19)} {
		c.c.WriteToUDP(junk, s.Addr())
	}
	if m, _ := c.roundTrip(s.Addr(), bindingRequest); m.typ != bindingSuccess {
		t.Errorf("after junk: reply type %#x", m.typ)
	}
}

// FuzzParse: parse never panics, and what it accepts builds back to a
// message of the same length and attributes.
func FuzzParse(f *testing.F) {
	f.Add(build(bindingRequest, [12]byte{1}, []attr{{attrChangeRequest, []byte{0, 0, 0, 2}}, {attrSoftware, []byte("x")}}))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, ok := parse(b)
		if !ok {
			return
		}
		again := build(m.typ, m.tid, m.attrs)
		m2, ok := parse(again)
		if !ok || len(again) != len(b) || len(m2.attrs) != len(m.attrs) {
			t.Fatalf("built back to %d bytes (%d attributes) from %d (%d)", len(again), len(m2.attrs), len(b), len(m.attrs))
		}
	})
}

// TestClose: Close ends both sockets' goroutines and may be called twice.
func TestClose(t *testing.T) {
	s, err := Listen(net.IPv4(127, 0, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	c, err := net.ListenUDP("udp4", addr)
	if err != nil {
		t.Fatalf("the primary port is still held: %v", err)
	}
	c.Close()
}
