package transport

import (
	"context"
	"io"
	"strings"
	"testing"
)

// benchmarkThroughput measures one stream, client to server, through the
// in-process chain of methods over one loopback TCP connection: MB/s is
// the application's bytes (1 MiB per iteration), both sides' CPU in this
// process. Never a timed test: figures for orientation (ptbench is where
// the product is measured).
func benchmarkThroughput(b *testing.B, spec string) {
	dialer, server := chainOf(b, strings.Split(spec, "|")...)
	l := Listen(server, listenLoopback(b))
	defer l.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		received <- n
	}()
	c, err := dialer.Dial(context.Background(), server.ClientArgs(), l.Addr().String(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := payload(1 << 20)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	if err := closeWrite(c); err != nil {
		b.Fatal(err)
	}
	n := <-received
	b.StopTimer()
	if want := int64(b.N) * int64(len(chunk)); n != want {
		b.Fatalf("server received %d bytes of %d", n, want)
	}
}

func BenchmarkObfs4(b *testing.B)      { benchmarkThroughput(b, "obfs4") }
func BenchmarkObfs4Obfs4(b *testing.B) { benchmarkThroughput(b, "obfs4|obfs4") }
func BenchmarkObfs3Obfs4(b *testing.B) { benchmarkThroughput(b, "obfs3|obfs4") }
