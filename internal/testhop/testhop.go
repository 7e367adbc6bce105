// Package testhop is the project's test PT (test/testpt) as an in-process
// hop, for tests only: the products never offer it. Its client side speaks
// to the test PT program's server, so a test can run the client of a chain
// that mixes the test PT's children and in-process transports in its own
// process, and its server side is an in-process hop as cheap as a hop can
// be, for tests of the engines rather than of a transport.
package testhop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// TestPT is the test PT's protocol for method, as a bytestream hop: the
// client sends "TESTPT1 <method> <key>\n", then both sides XOR every byte
// with the key. The key is the "key" argument (client) or option (server),
// 0-255; the server publishes it as its client argument, as the program
// does.
func TestPT(method string) transport.Bytestream {
	return transport.Bytestream{
		ClientCodec: func(args metadata.Args) (transport.Codec, error) {
			k, err := key(args)
			return codec{method: method, key: k, client: true}, err
		},
		ServerCodec: func(options metadata.Args) (transport.Codec, metadata.Args, error) {
			k, err := key(options)
			return codec{method: method, key: k}, metadata.Args{"key": {strconv.Itoa(int(k))}}, err
		},
	}
}

func key(args metadata.Args) (byte, error) {
	v, ok := args.Get("key")
	if !ok {
		return 0, errors.New("missing argument 'key'")
	}
	k, err := strconv.Atoi(v)
	if err != nil || k < 0 || k > 255 {
		return 0, fmt.Errorf("key %q is not 0-255", v)
	}
	return byte(k), nil
}

type codec struct {
	method string
	key    byte
	client bool
}

func (c codec) header() string { return fmt.Sprintf("TESTPT1 %s %d\n", c.method, c.key) }

func (c codec) Encoder(w io.Writer) (io.WriteCloser, error) {
	if c.client {
		if _, err := io.WriteString(w, c.header()); err != nil {
			return nil, err
		}
	}
	return xorStream{w: w, key: c.key}, nil
}

// Decoder reads the client's header on the server: exactly as many bytes
// as its own header has, so a header with another key of as many digits is
// refused at once.
func (c codec) Decoder(r io.Reader) (io.Reader, error) {
	if !c.client {
		want := c.header()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(r, got); err != nil {
			return nil, fmt.Errorf("reading the header: %w", err)
		}
		if string(got) != want {
			return nil, fmt.Errorf("header %q, want %q", got, want)
		}
	}
	return xorStream{r: r, key: c.key}, nil
}

// xorStream XORs what it reads from r or writes to w.
type xorStream struct {
	r   io.Reader
	w   io.Writer
	key byte
}

func (x xorStream) Read(p []byte) (int, error) {
	n, err := x.r.Read(p)
	for i := range p[:n] {
		p[i] ^= x.key
	}
	return n, err
}

func (x xorStream) Write(p []byte) (int, error) {
	out := make([]byte, len(p))
	for i, b := range p {
		out[i] = b ^ x.key
	}
	return x.w.Write(out)
}

func (xorStream) Close() error { return nil }

// Client is the client side of a chain of methods, innermost first, all
// in this process: package transport's builtins, and TestPT for "test" and
// "xor". stateDir is the builtins' (scramblesuit keeps tickets there).
// Close the returned Client when done.
func Client(stateDir string, methods ...string) (transport.Dialer, transport.Client, error) {
	var builtins []string
	for _, m := range methods {
		if m != "test" && m != "xor" && !slices.Contains(builtins, m) {
			builtins = append(builtins, m)
		}
	}
	if len(builtins) == 0 {
		builtins = []string{"obfs2"} // a Client to return; it holds nothing
	}
	cl, err := transport.BuiltinClient().Start(context.Background(), transport.ClientConfig{Methods: builtins, StateDir: stateDir})
	if err != nil {
		return nil, nil, err
	}
	dialers := cl.Dialers()
	hops := make([]transport.Dialer, len(methods))
	for i, m := range methods {
		hops[i] = dialers[m]
		if m == "test" || m == "xor" {
			hops[i] = TestPT(m)
		}
	}
	return transport.ClientChain(hops...), cl, nil
}
