package shim

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// PipeProgress tells each direction's bytes while the pipe runs, spliced
// (TCP to TCP) or copied (another net.Conn), and in all as much as it
// returns.
func TestPipeProgress(t *testing.T) {
	for _, spliced := range []bool{true, false} {
		name := map[bool]string{true: "spliced", false: "copied"}[spliced]
		t.Run(name, func(t *testing.T) {
			left, a := tcpPair(t)
			b, right := tcpPair(t)
			var bConn net.Conn = b
			if !spliced {
				bConn = struct{ *net.TCPConn }{b} // no longer a *net.TCPConn: io.Copy
			}
			var ab, ba atomic.Int64
			done := make(chan [2]int64, 1)
			go func() {
				x, y, _ := PipeProgress(context.Background(), a, bConn, func(n int64) { ab.Add(n) }, func(n int64) { ba.Add(n) })
				done <- [2]int64{x, y}
			}()
			defer left.Close()
			defer right.Close()
			const size = 3 << 20
			go left.Write(randomBytes(t, size))
			if _, err := io.CopyN(io.Discard, right, size); err != nil {
				t.Fatal(err)
			}
			// Everything arrived, and the pipe still runs: progress told it.
			waitProgress(t, &ab, size)
			go right.Write(randomBytes(t, 1000))
			if _, err := io.CopyN(io.Discard, left, 1000); err != nil {
				t.Fatal(err)
			}
			waitProgress(t, &ba, 1000)
			select {
			case <-done:
				t.Fatal("the pipe ended before its connections did")
			default:
			}
			left.Close()
			right.Close()
			n := <-done
			if n[0] != ab.Load() || n[1] != ba.Load() {
				t.Errorf("Pipe moved %v, progress told %d and %d", n, ab.Load(), ba.Load())
			}
		})
	}
}

// waitProgress waits until c reaches want; a minute, which a loaded
// machine never needs, bounds the wait.
func waitProgress(t *testing.T, c *atomic.Int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for c.Load() < want {
		if time.Now().After(deadline) {
			t.Fatalf("progress told %d bytes of %d", c.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	if c.Load() != want {
		t.Errorf("progress told %d bytes, want %d", c.Load(), want)
	}
}
