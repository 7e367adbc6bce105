package free

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/ptcombiner/ptcombiner/shim"
)

// version is the VER of every stream header and reply.
const version = 0x01

// Command is what a stream asks of the server: a closed vocabulary.
type Command struct{ code byte }

// The commands, with RFC 1928's codes.
var (
	Connect = Command{0x01} // a TCP connection to the header's destination
	UDP     = Command{0x03} // a UDP association: the stream carries frames
	// Advertise asks the bridge for its destination policy (advert.go);
	// the code is outside RFC 1928's, which an older bridge refuses with
	// REP 0x07.
	Advertise = Command{0x80}
	// Window opens the session's control stream (window.go), which an
	// older bridge refuses with REP 0x07.
	Window = Command{0x81}
)

func (c Command) String() string {
	switch c {
	case Connect:
		return "connect"
	case UDP:
		return "udp"
	case Advertise:
		return "advertise"
	case Window:
		return "window"
	}
	return fmt.Sprintf("command 0x%02x", c.code)
}

// Errors of the wire format; test for them with errors.Is.
var (
	// ErrVersion: a header or reply of another VER.
	ErrVersion = errors.New("free: unknown stream header version")
	// ErrCommand: a header with a CMD this server does not know.
	ErrCommand = errors.New("free: unknown stream command")
	// ErrFrame: a UDP frame too short for its address, or too long.
	ErrFrame = errors.New("free: malformed UDP frame")
)

// Header is the first thing on every stream, client to server.
type Header struct {
	Command Command
	Dest    shim.Addr // Connect only
	// Window, Window only: the bytes the client lets the server keep in
	// flight to it over the session (0: no limit).
	Window uint32
}

// AppendHeader appends h's encoding to b:
//
//	VER (0x01) | CMD (0x01 connect, 0x03 udp, 0x80 advertise, 0x81 window) [| ATYP | DST.ADDR | DST.PORT] [| WINDOW]
//
// with the destination, for Connect only, encoded as RFC 1928 section 5
// addresses are (shim.AppendAddr), and for Window only WINDOW, 4 bytes,
// big endian.
func AppendHeader(b []byte, h Header) ([]byte, error) {
	switch h.Command {
	case Connect:
		return shim.AppendAddr(append(b, version, h.Command.code), h.Dest)
	case Window:
		return binary.BigEndian.AppendUint32(append(b, version, h.Command.code), h.Window), nil
	case UDP, Advertise:
		return append(b, version, h.Command.code), nil
	}
	return b, fmt.Errorf("%w: %v", ErrCommand, h.Command)
}

// ReadHeader reads a stream header from r, exactly its bytes. It wraps
// ErrVersion, ErrCommand, and shim.ErrAddressNotSupported or
// shim.ErrMalformed for a destination that does not parse.
func ReadHeader(r io.Reader) (Header, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Header{}, fmt.Errorf("free: read stream header: %w", err)
	}
	if b[0] != version {
		return Header{}, fmt.Errorf("%w 0x%02x", ErrVersion, b[0])
	}
	h := Header{Command: Command{b[1]}}
	switch h.Command {
	case Connect:
		dest, err := shim.ReadAddr(r)
		if err != nil {
			return Header{}, fmt.Errorf("free: stream header's destination: %w", err)
		}
		h.Dest = dest
	case Window:
		var w [4]byte
		if _, err := io.ReadFull(r, w[:]); err != nil {
			return Header{}, fmt.Errorf("free: stream header's window: %w", noEOF(err))
		}
		h.Window = binary.BigEndian.Uint32(w[:])
	case UDP, Advertise:
	default:
		return Header{}, fmt.Errorf("%w 0x%02x", ErrCommand, b[1])
	}
	return h, nil
}

// writeReply answers a stream header: VER (0x01) | REP, where REP is a
// SOCKS5 reply code (RFC 1928 section 6, shim.Rep*).
func writeReply(w io.Writer, rep byte) error {
	_, err := w.Write([]byte{version, rep})
	return err
}

// readReply reads the server's answer to a stream header.
func readReply(r io.Reader) (byte, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("free: read the server's reply: %w", err)
	}
	if b[0] != version {
		return 0, fmt.Errorf("%w 0x%02x in the server's reply", ErrVersion, b[0])
	}
	return b[1], nil
}

// maxFrame is the most a frame's LEN can say.
const maxFrame = 0xffff

// AppendFrame appends one UDP frame to b:
//
//	LEN (2 bytes, big endian) | ATYP | ADDR | PORT | DATA
//
// where LEN counts the bytes after it, the address is the datagram's
// destination (client to server) or source (server to client), encoded as
// in RFC 1928, and DATA is the datagram. A datagram too long for LEN
// wraps ErrFrame.
func AppendFrame(b []byte, addr shim.Addr, data []byte) ([]byte, error) {
	n := addr.Len() + len(data)
	if n > maxFrame {
		return b, fmt.Errorf("%w: a datagram of %d bytes to %v does not fit in a frame", ErrFrame, len(data), addr)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b, err := shim.AppendAddr(b, addr)
	if err != nil {
		return b, err
	}
	return append(b, data...), nil
}

// ReadFrame reads one UDP frame from r into buf (which must hold
// maxFrame bytes) and returns its address and datagram, which aliases buf.
// A frame whose address does not parse wraps ErrFrame; the frames after
// it can still be read (LEN delimits them).
func ReadFrame(r io.Reader, buf []byte) (shim.Addr, []byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return shim.Addr{}, nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return shim.Addr{}, nil, fmt.Errorf("free: read a UDP frame of %d bytes: %w", n, noEOF(err))
	}
	addr, an, err := shim.DecodeAddr(buf[:n])
	if err != nil {
		return shim.Addr{}, nil, fmt.Errorf("%w: %w", ErrFrame, err)
	}
	return addr, buf[an:n], nil
}

// noEOF turns an EOF inside a message into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
