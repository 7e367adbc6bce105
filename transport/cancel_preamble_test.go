package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// readsPreamble is a codec whose decoder reads a one-byte preamble when it
// is made: a server handshake that waits for its client.
type readsPreamble struct{}

func (readsPreamble) Encoder(w io.Writer) (io.WriteCloser, error) { return nopWriteCloser{w}, nil }

func (readsPreamble) Decoder(r io.Reader) (io.Reader, error) {
	if _, err := r.Read(make([]byte, 1)); err != nil {
		return nil, err
	}
	return r, nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// A bytestream server handshake ended by its context returns the context's
// error; it used to close the typed-nil connection its failed decoder left
// and panic.
func TestBytestreamHandshakeCancelled(t *testing.T) {
	bs := Bytestream{ServerCodec: func(metadata.Args) (Codec, metadata.Args, error) { return readsPreamble{}, nil, nil }}
	srv, err := bs.Start(context.Background(), ServerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c, err := srv.WrapConn(ctx, a)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WrapConn = %v, %v; want the context's deadline", c, err)
	}
}
