package free

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/xtaci/smux"
)

// muxConfig is the smux configuration of both ends. Protocol version 2
// gives every stream its own flow-control window (MaxStreamBuffer), so a
// stream whose reader is slow or gone stops its sender without stopping
// the others, as long as the streams' windows fit the session's shared
// receive buffer (16 streams stalled in full here); snowflake runs smux
// v2 with 1 MiB streams the same way. A session hears a frame at least
// every KeepAliveInterval from a live peer, and is closed after
// KeepAliveTimeout without one.
//
// Frames are as long as smux allows (64 KiB less a byte, where smux's
// default is 32 KiB): each frame costs a hand-off through smux's
// shaper and send loop and a system call on each end, so a bulk stream
// pays half as many; a frame is written whole, so a stream's frame delays
// the others' by its length at most, and the streams stay within a few
// percent of each other (ptbench's evenness).
func muxConfig() *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2
	c.MaxFrameSize = maxFrameSize
	c.KeepAliveInterval = 10 * time.Second
	c.KeepAliveTimeout = 60 * time.Second
	c.MaxStreamBuffer = 1 << 20
	c.MaxReceiveBuffer = 16 << 20
	return c
}

// maxFrameSize is the longest smux frame (its LEN is 16 bits).
const maxFrameSize = 0xffff

// Copy buffers: a stream's copy reads into a small buffer while it carries
// little, as io.Copy does, and into a pooled large one while its reads
// fill the small one, so that a bulk transfer reads its socket in large
// pieces and writes full frames, and an idle stream holds no large
// buffer.
const (
	smallCopy = 32 << 10
	largeCopy = 4 * maxFrameSize
)

var largeBuffers = sync.Pool{New: func() any { b := make([]byte, largeCopy); return &b }}

// copyAdaptive copies src to dst, through a small buffer or, while the
// reads fill it, a large one.
func copyAdaptive(dst io.Writer, src io.Reader) (written int64, err error) {
	small := make([]byte, smallCopy)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largeBuffers.Put(large)
		}
	}()
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			if werr != nil {
				return written, werr
			}
			if w != n {
				return written, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
		switch {
		case large == nil && n == len(small):
			large = largeBuffers.Get().(*[]byte)
			buf = *large
		case large != nil && n < len(small):
			largeBuffers.Put(large)
			large, buf = nil, small
		}
	}
}

// serverStream is a stream as the server pipes it to its destination:
// smux's WriteTo one way, copyAdaptive the other, whose bytes wait for
// the reply (replied closed) to be written first.
type serverStream struct {
	*smux.Stream
	in      *headStart // the stream's bytes, the first ones read already
	replied <-chan struct{}
}

func (s serverStream) Read(b []byte) (int, error)         { return s.in.Read(b) }
func (s serverStream) WriteTo(w io.Writer) (int64, error) { return s.in.WriteTo(w) }

func (s serverStream) ReadFrom(r io.Reader) (int64, error) {
	<-s.replied
	return copyAdaptive(s.Stream, r)
}

func (s serverStream) Write(b []byte) (int, error) {
	<-s.replied
	return s.Stream.Write(b)
}

// watchedConn is a session's connection; broken is closed at its first
// read or write error. smux does not close a session whose connection
// failed (its streams fail, and its Accept), so both ends watch for it.
type watchedConn struct {
	net.Conn
	once   sync.Once
	broken chan struct{}
	err    error // set before broken is closed
}

func watch(c net.Conn) *watchedConn { return &watchedConn{Conn: c, broken: make(chan struct{})} }

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.fail(err)
	}
	return n, err
}

func (c *watchedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.fail(err)
	}
	return n, err
}

func (c *watchedConn) fail(err error) {
	c.once.Do(func() {
		c.err = err
		close(c.broken)
	})
}

// A stream's first bytes, without waiting for its first window update.
// smux v2 answers a stream's first read with a window update (it tells the
// peer the stream's window), and its Read waits until the session's send
// loop wrote that frame (hand-offs through the shaper and the send loop,
// and a system call) before it returns the bytes: on the server, before
// the header is parsed and the destination dialled; on the client,
// before the reply and the destination's first bytes reach the
// application. Its WriteTo hands the bytes on before it sends the update,
// so readFirst takes them through WriteTo, in a goroutine that then sends
// the update while the caller goes on.

// errFirstRead ends readFirst's WriteTo once it holds the first bytes.
var errFirstRead = errors.New("free: first read done")

// firstWriter takes the first bytes WriteTo writes, and stops it.
type firstWriter chan<- []byte

func (w firstWriter) Write(b []byte) (int, error) {
	w <- bytes.Clone(b)
	return len(b), errFirstRead
}

// headStart is a stream whose first bytes readFirst read: its Read and
// WriteTo give those first, then the stream's. The stream's next window
// update must follow the first one, so headStart waits for the first to
// be sent before it reads enough from the stream to send another (half
// its window: MaxStreamBuffer/2).
type headStart struct {
	st      *smux.Stream
	pending []byte        // the first bytes not read yet
	sent    chan struct{} // closed once the first window update was sent, or failed
	read    int           // bytes read from st after the first, until sent is closed
}

// readFirst returns st with its first bytes read (at least one), or the
// error that ended the stream before any came (io.EOF for an end).
func readFirst(st *smux.Stream) (*headStart, error) {
	h := &headStart{st: st, sent: make(chan struct{})}
	first := make(chan []byte, 1)
	fail := make(chan error, 1)
	go func() {
		defer close(h.sent)
		_, err := st.WriteTo(firstWriter(first))
		if err == nil {
			err = io.EOF
		}
		if err != errFirstRead {
			fail <- err
		}
	}()
	select {
	case h.pending = <-first:
		return h, nil
	case err := <-fail:
		return nil, err
	}
}

// earlyLimit bounds what headStart reads from the stream before the first
// window update was sent: less than half the stream's window, after which
// smux sends the next.
const earlyLimit = 1 << 18

// before is called before n bytes are read from the stream.
func (h *headStart) before(n int) {
	if h.sent == nil {
		return
	}
	if h.read+n >= earlyLimit {
		<-h.sent
		h.sent = nil
		return
	}
	h.read += n
}

func (h *headStart) Read(b []byte) (int, error) {
	if len(h.pending) > 0 {
		n := copy(b, h.pending)
		h.pending = h.pending[n:]
		return n, nil
	}
	h.before(len(b))
	return h.st.Read(b)
}

// WriteTo writes the first bytes left, then the stream's (smux's WriteTo).
func (h *headStart) WriteTo(w io.Writer) (int64, error) {
	var n int64
	if len(h.pending) > 0 {
		k, err := w.Write(h.pending)
		n += int64(k)
		h.pending = h.pending[k:]
		if err != nil {
			return n, err
		}
	}
	if h.sent != nil {
		w = earlyWriter{h, w}
	}
	k, err := h.st.WriteTo(w)
	return n + k, err
}

// earlyWriter is WriteTo's writer until the first window update was sent.
type earlyWriter struct {
	h *headStart
	w io.Writer
}

func (e earlyWriter) Write(b []byte) (int, error) {
	e.h.before(len(b))
	return e.w.Write(b)
}
