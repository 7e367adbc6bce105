// Package stun is a small STUN server for the project's tests: the Binding
// method of RFC 5389 over UDP, with the NAT behaviour discovery attributes
// of RFC 5780 that snowflake's NAT check needs (common/nat in snowflake
// v2.5.1: a Binding to the server, then one to its OTHER-ADDRESS; the
// mapping is "unrestricted" when both XOR-MAPPED-ADDRESSes are the same).
//
// A Server owns two UDP sockets on one IP: the primary port and the
// alternate port. A response carries XOR-MAPPED-ADDRESS (the request's
// source), OTHER-ADDRESS (the other socket) and RESPONSE-ORIGIN (the socket
// it is sent from). CHANGE-REQUEST with "change port" is answered from the
// other socket; "change IP" cannot be honoured with one IP and is answered
// with error 420, as is any comprehension-required attribute the server
// does not know. Anything that is not a Binding request is dropped.
//
// It answers each request as it reads it, on the socket's own goroutine:
// nothing is held per client, and Close ends both goroutines.
package stun

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
)

// RFC 5389 6: "The magic cookie field MUST contain the fixed value
// 0x2112A442 in network byte order."
const magicCookie = 0x2112A442

// Message types (RFC 5389 6 and 18.1): method Binding in the request,
// success response and error response classes.
const (
	bindingRequest  = 0x0001
	bindingSuccess  = 0x0101
	bindingError    = 0x0111
	headerLen       = 20
	maxMessageBytes = 1500
)

// Attribute types (RFC 5389 18.2, RFC 5780 9).
const (
	attrMappedAddress     = 0x0001
	attrChangeRequest     = 0x0003
	attrErrorCode         = 0x0009
	attrUnknownAttributes = 0x000A
	attrXORMappedAddress  = 0x0020
	attrSoftware          = 0x8022
	attrResponseOrigin    = 0x802B
	attrOtherAddress      = 0x802C
)

// CHANGE-REQUEST flags (RFC 5780 7.2): "A: This is the 'change IP' flag.
// B: This is the 'change port' flag."
const (
	changeIP   = 0x4
	changePort = 0x2
)

// Server is a running STUN server. Its zero value is not usable: Listen
// makes one.
type Server struct {
	conns [2]*net.UDPConn // primary port, alternate port
	wg    sync.WaitGroup
	once  sync.Once
}

// Listen starts a server on ip, on two ports the system chooses.
func Listen(ip net.IP) (*Server, error) {
	s := &Server{}
	for i := range s.conns {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
		if err != nil {
			for _, o := range s.conns[:i] {
				o.Close()
			}
			return nil, err
		}
		s.conns[i] = c
	}
	for i := range s.conns {
		s.wg.Add(1)
		go s.serve(i)
	}
	return s, nil
}

// Addr is the primary address: the one clients are given (stun:IP:PORT).
func (s *Server) Addr() *net.UDPAddr { return s.conns[0].LocalAddr().(*net.UDPAddr) }

// OtherAddr is the alternate address, published as OTHER-ADDRESS.
func (s *Server) OtherAddr() *net.UDPAddr { return s.conns[1].LocalAddr().(*net.UDPAddr) }

// Close closes both sockets and waits for their goroutines.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		err = errors.Join(s.conns[0].Close(), s.conns[1].Close())
		s.wg.Wait()
	})
	return err
}

func (s *Server) serve(i int) {
	defer s.wg.Done()
	buf := make([]byte, maxMessageBytes)
	for {
		n, from, err := s.conns[i].ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		out, reply := s.answer(i, buf[:n], from)
		if out >= 0 {
			s.conns[out].WriteToUDP(reply, from)
		}
	}
}

// answer builds the response to one datagram received on socket i from
// from, and says which socket sends it (-1: none).
func (s *Server) answer(i int, b []byte, from *net.UDPAddr) (int, []byte) {
	m, ok := parse(b)
	if !ok || m.typ != bindingRequest {
		return -1, nil
	}
	// RFC 5389 7.3.1: "If the request contains one or more unknown
	// comprehension-required attributes, the server replies with an error
	// response with an error code of 420 (Unknown Attribute), and includes
	// an UNKNOWN-ATTRIBUTES attribute in the response that lists the
	// unknown comprehension-required attributes."
	var unknown []uint16
	flags := uint32(0)
	for _, a := range m.attrs {
		switch {
		case a.typ == attrChangeRequest && len(a.value) == 4:
			flags = binary.BigEndian.Uint32(a.value)
		case a.typ < 0x8000:
			unknown = append(unknown, a.typ)
		}
	}
	if flags&changeIP != 0 {
		// One IP: the request cannot be honoured.
		unknown = append(unknown, attrChangeRequest)
	}
	if len(unknown) > 0 {
		list := make([]byte, 2*len(unknown))
		for k, u := range unknown {
			binary.BigEndian.PutUint16(list[2*k:], u)
		}
		return i, build(bindingError, m.tid, []attr{
			{attrErrorCode, errorCode(420, "Unknown Attribute")},
			{attrUnknownAttributes, list},
		})
	}
	out := i
	if flags&changePort != 0 {
		out = 1 - i
	}
	return out, build(bindingSuccess, m.tid, []attr{
		{attrXORMappedAddress, xorAddress(from)},
		{attrMappedAddress, address(from)},
		{attrOtherAddress, address(s.conns[1-i].LocalAddr().(*net.UDPAddr))},
		{attrResponseOrigin, address(s.conns[out].LocalAddr().(*net.UDPAddr))},
		{attrSoftware, []byte("ptcombiner test STUN")},
	})
}

type attr struct {
	typ   uint16
	value []byte
}

type message struct {
	typ   uint16
	tid   [12]byte
	attrs []attr
}

// parse decodes a STUN message (RFC 5389 6 and 15): "The most significant
// 2 bits of every STUN message MUST be zeroes", the magic cookie, a length
// that is a multiple of 4 covering the attributes, each "padded to a
// multiple of 4 bytes".
func parse(b []byte) (message, bool) {
	var m message
	if len(b) < headerLen || b[0]&0xC0 != 0 || binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		return m, false
	}
	m.typ = binary.BigEndian.Uint16(b[0:2])
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 || headerLen+n != len(b) {
		return m, false
	}
	copy(m.tid[:], b[8:20])
	for rest := b[headerLen:]; len(rest) > 0; {
		if len(rest) < 4 {
			return m, false
		}
		t, l := binary.BigEndian.Uint16(rest[0:2]), int(binary.BigEndian.Uint16(rest[2:4]))
		padded := (l + 3) &^ 3
		if 4+padded > len(rest) {
			return m, false
		}
		m.attrs = append(m.attrs, attr{t, rest[4 : 4+l]})
		rest = rest[4+padded:]
	}
	return m, true
}

// build encodes a message with the given attributes, each padded to 4
// bytes.
func build(typ uint16, tid [12]byte, attrs []attr) []byte {
	b := make([]byte, headerLen, maxMessageBytes)
	binary.BigEndian.PutUint16(b[0:2], typ)
	binary.BigEndian.PutUint32(b[4:8], magicCookie)
	copy(b[8:20], tid[:])
	for _, a := range attrs {
		b = binary.BigEndian.AppendUint16(b, a.typ)
		b = binary.BigEndian.AppendUint16(b, uint16(len(a.value)))
		b = append(b, a.value...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)-headerLen))
	return b
}

// address encodes MAPPED-ADDRESS (RFC 5389 15.1), the format OTHER-ADDRESS
// and RESPONSE-ORIGIN share: a zero byte, family 0x01 (IPv4), the port and
// the address.
func address(a *net.UDPAddr) []byte {
	b := []byte{0, 0x01, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(a.Port))
	return append(b, a.IP.To4()...)
}

// xorAddress encodes XOR-MAPPED-ADDRESS (RFC 5389 15.2): "X-Port is
// computed by taking the mapped port in host byte order, XOR'ing it with
// the most significant 16 bits of the magic cookie"; for IPv4, "X-Address
// is computed by taking the mapped IP address in host byte order, XOR'ing
// it with the magic cookie".
func xorAddress(a *net.UDPAddr) []byte {
	b := address(a)
	binary.BigEndian.PutUint16(b[2:], uint16(a.Port)^uint16(magicCookie>>16))
	binary.BigEndian.PutUint32(b[4:], binary.BigEndian.Uint32(b[4:])^magicCookie)
	return b
}

// errorCode encodes ERROR-CODE (RFC 5389 15.6): 21 zero bits, the class
// (hundreds) in 3 bits, the number (0-99) in 8 bits, then the reason
// phrase.
func errorCode(code int, reason string) []byte {
	b := []byte{0, 0, byte(code / 100), byte(code % 100)}
	return append(b, reason...)
}
