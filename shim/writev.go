package shim

import "net"

// BuffersWriter is a connection that writes several buffers as one write,
// as smux's send loop asks of its connection (a frame's header and its
// payload).
type BuffersWriter interface {
	WriteBuffers(v [][]byte) (int, error)
}

// WriteBuffers writes v to c as one write: through c's own WriteBuffers,
// in one system call (writev) when c is a TCP connection, and otherwise
// joined into one buffer first, so that a transport that frames each
// Write (an in-process hop) sees one Write, not a header alone. It
// consumes nothing of v's elements' contents but may reslice v's
// elements.
func WriteBuffers(c net.Conn, v [][]byte) (int, error) {
	switch w := c.(type) {
	case BuffersWriter:
		return w.WriteBuffers(v)
	case *net.TCPConn:
		bufs := net.Buffers(v)
		n, err := bufs.WriteTo(w)
		return int(n), err
	}
	size := 0
	for _, b := range v {
		size += len(b)
	}
	joined := make([]byte, 0, size)
	for _, b := range v {
		joined = append(joined, b...)
	}
	return c.Write(joined)
}
