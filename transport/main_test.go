package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every exchange of a test: generous, the machine is
// shared, and only a hang should ever reach it.
const testTimeout = 5 * time.Minute

// sizes are the payload sizes of the round trips; -short leaves out the
// largest.
func sizes() []int {
	s := []int{0, 1, 64 << 10, 1 << 20, 16 << 20}
	if !testing.Short() {
		s = append(s, 64<<20)
	}
	return s
}

// payload returns n reproducible pseudo-random bytes.
func payload(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)})
	r.Read(b)
	return b
}

// listenLoopback returns a TCP listener on 127.0.0.1, closed when the test
// ends.
func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveEcho serves srv on a loopback listener and echoes every connection
// (see echo). It returns the address; everything ends with the test.
func serveEcho(t testing.TB, srv Server) string {
	t.Helper()
	l := Listen(srv, listenLoopback(t))
	echoAll(t, l)
	return l.Addr().String()
}

// plainEcho is serveEcho without a transport: the ORPort of a PT program.
func plainEcho(t testing.TB) string {
	t.Helper()
	ln := listenLoopback(t)
	echoAll(t, ln)
	return ln.Addr().String()
}

// echoAll echoes every connection ln accepts until the test ends, when it
// closes ln and every connection and waits for their goroutines.
func echoAll(t testing.TB, ln net.Listener) {
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); echo(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// echo copies c back to itself until EOF, then half-closes and waits for
// the peer to close.
func echo(c net.Conn) {
	defer c.Close()
	if _, err := io.Copy(c, c); err == nil {
		closeWrite(c)
		io.Copy(io.Discard, c)
	}
}

// exchange sends data over c, reads it back, and checks it byte for byte.
// With halfClose it ends its side with CloseWrite and expects EOF after
// the echo, so half-close must cross every hop; without, it reads exactly
// len(data) bytes (the PT programs close both sides at the first EOF).
func exchange(t testing.TB, c net.Conn, data []byte, halfClose bool) {
	t.Helper()
	c.SetDeadline(time.Now().Add(testTimeout))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil && halfClose {
			err = closeWrite(c)
		}
		werr <- err
	}()
	h := sha256.New()
	var n int64
	var err error
	if halfClose {
		n, err = io.Copy(h, c)
	} else {
		n, err = io.CopyN(h, c, int64(len(data)))
	}
	if err != nil {
		t.Fatalf("reading the echo after %d of %d bytes: %v", n, len(data), err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing %d bytes: %v", len(data), err)
	}
	want := sha256.Sum256(data)
	if n != int64(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo of %d bytes came back as %d different bytes", len(data), n)
	}
}

// startServer starts a builtin method's server with its own state dir.
func startServer(t testing.TB, method string, options metadata.Args) Server {
	t.Helper()
	st, err := BuiltinServer(method)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := st.Start(context.Background(), ServerConfig{StateDir: filepath.Join(t.TempDir(), method), Options: options})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// builtinDialers returns the builtin client's dialers.
func builtinDialers(t testing.TB) map[string]Dialer {
	t.Helper()
	c, err := BuiltinClient().Start(context.Background(), ClientConfig{
		Methods: BuiltinMethods(false), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.Dialers()
}

// chainOf builds the client and server sides of a chain of builtin
// methods, innermost first.
func chainOf(t testing.TB, methods ...string) (Dialer, Server) {
	t.Helper()
	dialers := builtinDialers(t)
	var ds []Dialer
	var ss []Server
	for _, m := range methods {
		ds = append(ds, dialers[m])
		ss = append(ss, startServer(t, m, nil))
	}
	return ClientChain(ds...), ServerChain(ss...)
}

var errNoNetwork = errors.New("no network in this test")

// noNetwork is a DialFunc for tests that must never reach the network.
func noNetwork(context.Context, string) (net.Conn, error) { return nil, errNoNetwork }

func sizeName(n int) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
