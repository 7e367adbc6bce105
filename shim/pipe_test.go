package shim

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

type pipeResult struct {
	aToB, bToA int64
	err        error
}

// pipeRig is left <-> a ==Pipe== b <-> right, on loopback.
type pipeRig struct {
	left, a, b, right *net.TCPConn
	done              chan pipeResult
}

func startPipe(t *testing.T, ctx context.Context) *pipeRig {
	t.Helper()
	r := &pipeRig{done: make(chan pipeResult, 1)}
	r.left, r.a = tcpPair(t)
	r.b, r.right = tcpPair(t)
	go func() {
		var res pipeResult
		res.aToB, res.bToA, res.err = Pipe(ctx, r.a, r.b)
		r.done <- res
	}()
	// Whatever happens, the Pipe goroutine ends before the test does.
	t.Cleanup(func() { r.left.Close(); r.right.Close() })
	return r
}

// assertClosed checks that Pipe closed c itself.
func assertClosed(t *testing.T, name string, c *net.TCPConn) {
	t.Helper()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("%s not closed by Pipe: Read returned %v", name, err)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sendAll writes p and half-closes; readAll reads to EOF.
func sendAll(c *net.TCPConn, p []byte) <-chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := c.Write(p)
		if err == nil {
			err = c.CloseWrite()
		}
		ch <- err
	}()
	return ch
}

type readResult struct {
	b   []byte
	err error
}

func readAll(c *net.TCPConn) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b, err := io.ReadAll(c)
		ch <- readResult{b, err}
	}()
	return ch
}

func TestPipeRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 1 << 20} {
		t.Run(byteCount(n), func(t *testing.T) {
			r := startPipe(t, context.Background())
			x, y := randomBytes(t, n), randomBytes(t, n)
			gotRight, gotLeft := readAll(r.right), readAll(r.left)
			sentX, sentY := sendAll(r.left, x), sendAll(r.right, y)
			for _, ch := range []<-chan error{sentX, sentY} {
				if err := <-ch; err != nil {
					t.Fatalf("send: %v", err)
				}
			}
			if got := <-gotRight; got.err != nil || !bytes.Equal(got.b, x) {
				t.Errorf("left->right: %d bytes, %v; want %d bytes equal", len(got.b), got.err, n)
			}
			if got := <-gotLeft; got.err != nil || !bytes.Equal(got.b, y) {
				t.Errorf("right->left: %d bytes, %v; want %d bytes equal", len(got.b), got.err, n)
			}
			res := <-r.done
			if res.err != nil || res.aToB != int64(n) || res.bToA != int64(n) {
				t.Errorf("Pipe = %d, %d, %v; want %d, %d, nil", res.aToB, res.bToA, res.err, n, n)
			}
			assertClosed(t, "a", r.a)
			assertClosed(t, "b", r.b)
		})
	}
}

func byteCount(n int) string {
	switch n {
	case 0:
		return "0B"
	case 1:
		return "1B"
	default:
		return "1MiB"
	}
}

func TestPipeHalfClose(t *testing.T) {
	r := startPipe(t, context.Background())
	if err := <-sendAll(r.left, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	// left's half-close reaches right as EOF...
	if got := <-readAll(r.right); got.err != nil || string(got.b) != "ping" {
		t.Fatalf("right read %q, %v", got.b, got.err)
	}
	// ...and the other direction still carries data.
	if _, err := r.right.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(r.left, b); err != nil || string(b) != "pong" {
		t.Fatalf("left read %q, %v", b, err)
	}
	select {
	case res := <-r.done:
		t.Fatalf("Pipe ended with one direction still open: %+v", res)
	default:
	}
	r.right.CloseWrite()
	if got := <-readAll(r.left); got.err != nil || len(got.b) != 0 {
		t.Fatalf("left after right's half-close: %q, %v", got.b, got.err)
	}
	res := <-r.done
	if res.err != nil || res.aToB != 4 || res.bToA != 4 {
		t.Fatalf("Pipe = %+v, want 4, 4, nil", res)
	}
	assertClosed(t, "a", r.a)
	assertClosed(t, "b", r.b)
}

func TestPipeCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := startPipe(t, ctx)
	r.left.Write([]byte("x"))
	b := make([]byte, 1)
	if _, err := io.ReadFull(r.right, b); err != nil {
		t.Fatal(err)
	}
	cancel()
	res := <-r.done
	if !errors.Is(res.err, context.Canceled) || res.aToB != 1 {
		t.Fatalf("Pipe = %+v, want 1 byte and context.Canceled", res)
	}
	assertClosed(t, "a", r.a)
	assertClosed(t, "b", r.b)
	// Both far ends see the end.
	for name, c := range map[string]*net.TCPConn{"left": r.left, "right": r.right} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(b); err == nil {
			t.Errorf("%s still open", name)
		}
	}
}

func TestPipeErrorClosesBoth(t *testing.T) {
	r := startPipe(t, context.Background())
	// A reset on b's side is an error, not an EOF: both sides close.
	r.right.SetLinger(0)
	r.right.Close()
	res := <-r.done
	if !errors.Is(res.err, syscall.ECONNRESET) {
		t.Errorf("Pipe error %v, want ECONNRESET", res.err)
	}
	assertClosed(t, "a", r.a)
	assertClosed(t, "b", r.b)
	r.left.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got := <-readAll(r.left); got.err != nil || len(got.b) != 0 {
		t.Errorf("left after the reset: %q, %v; want EOF", got.b, got.err)
	}
}
