package free

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/shim"
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
//
// window is each stream's receive window in bytes (0: DefaultStreamWindow),
// what this end lets the other send ahead on one stream, announced in
// every window update; the session's receive buffer holds 16 of them.
func muxConfig(window int) *smux.Config {
	if window <= 0 {
		window = DefaultStreamWindow
	}
	c := smux.DefaultConfig()
	c.Version = 2
	c.MaxFrameSize = maxFrameSize
	c.KeepAliveInterval = 10 * time.Second
	c.KeepAliveTimeout = 60 * time.Second
	c.MaxStreamBuffer = window
	c.MaxReceiveBuffer = streamsBuffered * window
	return c
}

// Stream windows (docs/free.md, "Stream window"). smux returns window
// once half of it has been read, so a stream has between a half and a
// whole window in flight and carries about that per round trip. Over a
// 100 ms, 50 Mbit/s link (ptbench -links) 2 MiB carried a 32 MiB download
// at 0.99x a bound chained connection and an echoed 32 MiB stream at
// 0.92x, where 1 MiB gave 0.87-0.88x and 0.80-0.86x; 8 bulk streams of
// 16 MiB each shared the link within 0.84-0.93 of each other at 2 MiB.
// Larger windows cost evenness over streams only a few windows long,
// served in the order their windows reached the queue: on loopback 8
// streams of 8 MiB finished within 0.92-0.97 of each other with 1 MiB,
// 0.81-0.91 with 2 MiB and 0.19-0.80 with 8 MiB. And every window in
// flight is a wait for a new stream behind it (ptbench's setup under
// load).
const (
	DefaultStreamWindow = 2 << 20
	MinStreamWindow     = 64 << 10
	MaxStreamWindow     = 64 << 20
	// streamsBuffered streams stalled with full windows (their readers
	// gone quiet) fit in the session's receive buffer before it stalls
	// every stream.
	streamsBuffered = 16
)

// CheckStreamWindow says what is wrong with a stream window of n bytes.
func CheckStreamWindow(n int) error {
	if n < MinStreamWindow || n > MaxStreamWindow {
		return fmt.Errorf("free: a stream window of %d KiB: want %d to %d KiB", n>>10, MinStreamWindow>>10, MaxStreamWindow>>10)
	}
	return nil
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
	gatedStream
	replied <-chan struct{}
}

func (s serverStream) ReadFrom(r io.Reader) (int64, error) {
	<-s.replied
	return copyAdaptive(s.gatedStream, r)
}

func (s serverStream) Write(b []byte) (int, error) {
	<-s.replied
	return s.gatedStream.Write(b)
}

// watchedConn is a session's connection; broken is closed at its first
// read or write error. smux does not close a session whose connection
// failed (its streams fail, and its Accept), so both ends watch for it.
//
// It also counts the bytes each way, for the session window (window.go):
// read, and creditDue, signalled each time read has grown by creditEvery
// (0: never), are this end's credits; wrote is what this end has in
// flight, less the peer's credits.
type watchedConn struct {
	net.Conn
	once   sync.Once
	broken chan struct{}
	err    error // set before broken is closed

	read, wrote atomic.Int64
	creditEvery atomic.Int64
	credited    int64         // read when creditDue was last signalled; smux's one reader's
	creditDue   chan struct{} // capacity 1
}

func watch(c net.Conn) *watchedConn {
	return &watchedConn{Conn: c, broken: make(chan struct{}), creditDue: make(chan struct{}, 1)}
}

// Read is smux's receive loop's, its one reader.
func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		t := c.read.Add(int64(n))
		if every := c.creditEvery.Load(); every > 0 && t-c.credited >= every {
			c.credited = t
			select {
			case c.creditDue <- struct{}{}:
			default:
			}
		}
	}
	if err != nil {
		c.fail(err)
	}
	return n, err
}

func (c *watchedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.wrote.Add(int64(n))
	if err != nil {
		c.fail(err)
	}
	return n, err
}

// WriteBuffers is how smux's send loop writes a frame, its header and
// its payload together (shim.WriteBuffers): one system call, where the
// connection beneath is TCP, instead of a copy of the payload behind the
// header and then the write.
func (c *watchedConn) WriteBuffers(v [][]byte) (int, error) {
	n, err := shim.WriteBuffers(c.Conn, v)
	c.wrote.Add(int64(n))
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
