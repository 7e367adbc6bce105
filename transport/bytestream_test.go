package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/nettest"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// xorCodec XORs every byte with a key: the simplest transform, with no
// preamble and nothing held back. Test code only.
type xorCodec byte

func (k xorCodec) Encoder(w io.Writer) (io.WriteCloser, error) { return xorWriter{w, byte(k)}, nil }
func (k xorCodec) Decoder(r io.Reader) (io.Reader, error)      { return xorReader{r, byte(k)}, nil }

type xorWriter struct {
	w   io.Writer
	key byte
}

func (x xorWriter) Write(p []byte) (int, error) {
	buf := make([]byte, len(p))
	for i, b := range p {
		buf[i] = b ^ x.key
	}
	return x.w.Write(buf)
}

func (xorWriter) Close() error { return nil }

type xorReader struct {
	r   io.Reader
	key byte
}

func (x xorReader) Read(p []byte) (int, error) {
	n, err := x.r.Read(p)
	for i := range p[:n] {
		p[i] ^= x.key
	}
	return n, err
}

// xorHop is a bytestream hop whose key is an argument: the server's option
// "key", published to clients as "key".
var xorHop = Bytestream{
	ClientCodec: func(args metadata.Args) (Codec, error) { return parseXORKey(args) },
	ServerCodec: func(options metadata.Args) (Codec, metadata.Args, error) {
		k, err := parseXORKey(options)
		return k, metadata.Args{"key": {strconv.Itoa(int(k))}}, err
	},
}

func parseXORKey(args metadata.Args) (xorCodec, error) {
	v, ok := args.Get("key")
	if !ok {
		return 0x5a, nil
	}
	k, err := strconv.ParseUint(v, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("key %q is not 0-255", v)
	}
	return xorCodec(k), nil
}

// frameCodec frames the stream in length-prefixed chunks after a magic
// preamble; it buffers its frames until flushed (the Nagle-style delayed
// output) and ends the stream with an empty frame. Test code only.
type frameCodec struct{}

const frameMagic = "FRAME1\n"

func (frameCodec) Encoder(w io.Writer) (io.WriteCloser, error) {
	bw := bufio.NewWriter(w)
	if _, err := bw.WriteString(frameMagic); err != nil {
		return nil, err
	}
	return &frameWriter{bw}, nil
}

func (frameCodec) Decoder(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(frameMagic))
	if _, err := io.ReadFull(br, magic); err != nil {
		return nil, fmt.Errorf("reading the preamble: %w", err)
	}
	if string(magic) != frameMagic {
		return nil, fmt.Errorf("bad preamble %q", magic)
	}
	return &frameReader{r: br}, nil
}

type frameWriter struct{ bw *bufio.Writer }

func (f *frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); {
		n := min(len(p)-off, 1000)
		var hdr [2]byte
		binary.BigEndian.PutUint16(hdr[:], uint16(n))
		f.bw.Write(hdr[:])
		if _, err := f.bw.Write(p[off : off+n]); err != nil {
			return off, err
		}
		off += n
	}
	return len(p), nil
}

func (f *frameWriter) Flush() error { return f.bw.Flush() }

func (f *frameWriter) Close() error {
	f.bw.Write([]byte{0, 0})
	return f.bw.Flush()
}

type frameReader struct {
	r    *bufio.Reader
	left int
	done bool
}

func (f *frameReader) Read(p []byte) (int, error) {
	if f.done {
		return 0, io.EOF
	}
	if f.left == 0 {
		var hdr [2]byte
		if _, err := io.ReadFull(f.r, hdr[:]); err != nil {
			return 0, fmt.Errorf("stream ended without its end frame: %w", err)
		}
		if f.left = int(binary.BigEndian.Uint16(hdr[:])); f.left == 0 {
			f.done = true
			return 0, io.EOF
		}
	}
	n, err := f.r.Read(p[:min(len(p), f.left)])
	f.left -= n
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

var frameHop = Bytestream{
	ClientCodec: func(metadata.Args) (Codec, error) { return frameCodec{}, nil },
	ServerCodec: func(metadata.Args) (Codec, metadata.Args, error) { return frameCodec{}, nil, nil },
}

func startBytestream(t testing.TB, b Bytestream, options metadata.Args) Server {
	t.Helper()
	srv, err := b.Start(context.Background(), ServerConfig{Options: options})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestBytestreamRoundTrips: bytestream hops alone and mixed with obfs4 in
// chains, both sides; half-close ends the framed stream with
// its trailer. Sizes to 1 MiB: the test codecs loop over bytes, slow under
// -race; the large sizes are the module's tests.
func TestBytestreamRoundTrips(t *testing.T) {
	obfs4 := builtinDialers(t)["obfs4"]
	for _, tc := range []struct {
		name    string
		dialer  Dialer
		servers func() Server
	}{
		{"xor", xorHop, func() Server { return startBytestream(t, xorHop, metadata.Args{"key": {"7"}}) }},
		{"frame", frameHop, func() Server { return startBytestream(t, frameHop, nil) }},
		{"xor_obfs4", ClientChain(xorHop, obfs4), func() Server {
			return ServerChain(startBytestream(t, xorHop, nil), startServer(t, "obfs4", nil))
		}},
		{"obfs4_frame", ClientChain(obfs4, frameHop), func() Server {
			return ServerChain(startServer(t, "obfs4", nil), startBytestream(t, frameHop, nil))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			server := tc.servers()
			addr := serveEcho(t, server)
			for _, n := range sizes()[:4] {
				t.Run(sizeName(n), func(t *testing.T) {
					c, err := tc.dialer.Dial(context.Background(), server.ClientArgs(), addr, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					exchange(t, c, payload(n), true)
				})
			}
		})
	}
}

// TestBytestreamConn: a bytestream hop's connection is a net.Conn by the
// book (x/net/nettest: deadlines, concurrent use, close).
func TestBytestreamConn(t *testing.T) {
	server := startBytestream(t, xorHop, nil)
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, nil, err
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			raw, err := ln.Accept()
			if err != nil {
				accepted <- nil
				return
			}
			c, _ := server.WrapConn(context.Background(), raw)
			accepted <- c
		}()
		c1, err = xorHop.Dial(context.Background(), nil, ln.Addr().String(), nil)
		c2 = <-accepted
		if err != nil || c2 == nil {
			if c1 != nil {
				c1.Close()
			}
			return nil, nil, nil, fmt.Errorf("pair: %v", err)
		}
		return c1, c2, func() { c1.Close(); c2.Close() }, nil
	})
}

// TestBytestreamBadInput: a codec's refusal reaches the caller: bad
// options at Start, bad settings at Dial, a bad preamble as a failed
// handshake the Listener counts.
func TestBytestreamBadInput(t *testing.T) {
	if _, err := xorHop.Start(context.Background(), ServerConfig{Options: metadata.Args{"key": {"300"}}}); err == nil || !strings.Contains(err.Error(), "300") {
		t.Errorf("bad option: %v", err)
	}
	if _, err := xorHop.Dial(context.Background(), metadata.Args{"key": {"x"}}, "192.0.2.1:1", noNetwork); err == nil || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("bad setting: %v", err)
	}
	if _, err := (Bytestream{}).Start(context.Background(), ServerConfig{}); err == nil {
		t.Error("a bytestream without a server side started")
	}
	failed := make(chan error, 1)
	l := ListenConfig{OnError: func(_ net.Addr, err error) { failed <- err }}.Listen(startBytestream(t, frameHop, nil), listenLoopback(t))
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "NOT A FRAME STREAM\n")
	if err := <-failed; !strings.Contains(err.Error(), "bad preamble") {
		t.Errorf("handshake error %v", err)
	}
	if s := l.Stats(); s.Accepted != 1 || s.Failed != 1 || s.Open != 0 {
		t.Errorf("stats %+v", s)
	}
}
