package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// Codec is a bytestream transform of one side of a connection (seed,
// "Bytestreams"): an encoder for the bytes the side sends and a decoder for
// those it receives. Each call makes the encoder or decoder of one
// connection; a Codec is shared by all of them.
type Codec interface {
	// Encoder returns the writer the hop writes the application's bytes
	// to; it writes them, encoded, to w, and blocks while w blocks
	// (backpressure). It may write a preamble to w at once. Close ends
	// the encoded stream (writing a trailer, if the encoding has one) and
	// must not close w. An encoder that holds bytes back to coalesce them
	// (Nagle-style) also implements Flush() error, which the hop calls at
	// the end of each application Write.
	Encoder(w io.Writer) (io.WriteCloser, error)
	// Decoder returns the reader the hop reads the application's bytes
	// from; it reads the encoded stream from r, and may read a preamble
	// from r at once (a handshake). It returns io.EOF at the end of the
	// encoded stream.
	Decoder(r io.Reader) (io.Reader, error)
}

// Bytestream makes a hop, on both sides, of a transport written as a
// bytestream transform: it is a Dialer and a ServerTransport. On the client
// the encoder is made first (it may send a preamble), then the decoder; on
// the server the decoder first (it may read the client's preamble), then
// the encoder, so a handshake of one preamble each way cannot deadlock.
type Bytestream struct {
	// ClientCodec makes the codec of one client connection from its
	// connection settings (tor's per-connection arguments).
	ClientCodec func(args metadata.Args) (Codec, error)
	// ServerCodec makes the server's codec from its options, and says the
	// arguments a client needs (published in SMETHOD ARGS).
	ServerCodec func(options metadata.Args) (codec Codec, clientArgs metadata.Args, err error)
}

var (
	_ Dialer          = Bytestream{}
	_ ServerTransport = Bytestream{}
)

// Dial opens the hop's connection with under and runs the client side of
// the transform over it.
func (b Bytestream) Dial(ctx context.Context, args metadata.Args, addr string, under DialFunc) (Conn, error) {
	start := time.Now()
	if b.ClientCodec == nil {
		return nil, errors.New("transport: the bytestream has no client side")
	}
	codec, err := b.ClientCodec(args)
	if err != nil {
		return nil, err
	}
	if under == nil {
		under = Direct
	}
	lower, err := under(ctx, addr)
	if err != nil {
		return nil, err
	}
	return handshake(ctx, lower, start, func() (net.Conn, error) { return newStreamConn(codec, lower, true) })
}

// Start makes the server's codec from cfg.Options; a bytestream keeps no
// state, so cfg.StateDir is unused.
func (b Bytestream) Start(_ context.Context, cfg ServerConfig) (Server, error) {
	if b.ServerCodec == nil {
		return nil, errors.New("transport: the bytestream has no server side")
	}
	codec, clientArgs, err := b.ServerCodec(cfg.Options)
	if err != nil {
		return nil, err
	}
	return streamServer{codec: codec, clientArgs: clientArgs}, nil
}

type streamServer struct {
	codec      Codec
	clientArgs metadata.Args
}

func (s streamServer) ClientArgs() metadata.Args { return copyArgs(s.clientArgs) }

func (s streamServer) WrapConn(ctx context.Context, lower net.Conn) (Conn, error) {
	start := time.Now()
	return handshake(ctx, lower, start, func() (net.Conn, error) { return newStreamConn(s.codec, lower, false) })
}

func (streamServer) Close() error { return nil }

// handshake runs wrap, which makes a transport's connection over lower,
// while ctx may end it: cancelling ctx closes lower, so a handshake that
// takes no context returns. On error lower is closed.
func handshake(ctx context.Context, lower net.Conn, start time.Time, wrap func() (net.Conn, error)) (Conn, error) {
	stop := context.AfterFunc(ctx, func() { lower.Close() })
	c, err := wrap()
	if !stop() { // ctx ended the handshake: its error is the reason
		if err == nil { // on error c may be a typed nil (a *streamConn)
			c.Close()
		}
		return nil, fmt.Errorf("handshake: %w (%v)", context.Cause(ctx), err)
	}
	if err != nil {
		lower.Close()
		return nil, err
	}
	return newConn(c, lower, start), nil
}

// streamConn runs a Codec over a connection. Read and Write are
// synchronous (no goroutine of its own): backpressure and deadlines are
// those of the connection beneath.
type streamConn struct {
	net.Conn // the connection beneath: addresses, deadlines, Close

	rmu sync.Mutex
	dec io.Reader

	wmu        sync.Mutex
	enc        io.WriteCloser
	flush      func() error // the encoder's Flush, or nil
	wroteClose bool
}

func newStreamConn(codec Codec, lower net.Conn, client bool) (*streamConn, error) {
	c := &streamConn{Conn: lower}
	var err error
	if client {
		if err = c.makeEncoder(codec); err == nil {
			c.dec, err = codec.Decoder(lower)
		}
	} else {
		if c.dec, err = codec.Decoder(lower); err == nil {
			err = c.makeEncoder(codec)
		}
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *streamConn) makeEncoder(codec Codec) error {
	enc, err := codec.Encoder(c.Conn)
	if err != nil {
		return err
	}
	c.enc = enc
	if f, ok := enc.(interface{ Flush() error }); ok {
		c.flush = f.Flush
	}
	return c.flushed()
}

func (c *streamConn) flushed() error {
	if c.flush == nil {
		return nil
	}
	return c.flush()
}

func (c *streamConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.dec.Read(p)
}

func (c *streamConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wroteClose {
		return 0, net.ErrClosed
	}
	n, err := c.enc.Write(p)
	if err != nil {
		return n, err
	}
	return n, c.flushed()
}

// CloseWrite ends the encoded stream, then half-closes the connection
// beneath.
func (c *streamConn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wroteClose {
		return nil
	}
	c.wroteClose = true
	if err := c.enc.Close(); err != nil {
		return err
	}
	return closeWrite(c.Conn)
}

// copyArgs returns a copy of args that the caller may change.
func copyArgs(args metadata.Args) metadata.Args {
	out := make(metadata.Args, len(args))
	for k, vs := range args {
		out[k] = append([]string(nil), vs...)
	}
	return out
}
