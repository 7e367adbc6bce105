package transport

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// holdConn delays its first Read until hold is closed, so that the bytes
// the peer sent after its handshake arrive with the handshake in one read.
type holdConn struct {
	net.Conn
	hold <-chan struct{}
	once sync.Once
}

func (c *holdConn) Read(p []byte) (int, error) {
	c.once.Do(func() { <-c.hold })
	return c.Conn.Read(p)
}

// TestBytesWithTheHandshake: the module's obfs4 client decodes the bytes
// that came in the same read as the server's handshake only when more bytes
// arrive from the network (the stall PROTOCOLS.md reports of obfs4proxy,
// which has the same code), so a protocol whose server speaks first (obfs3
// inside obfs4, a banner) would hang. The server here writes a greeting
// right after its handshake, and the client reads the handshake only once
// the greeting is sent; the greeting must arrive. The frames are padded at
// random, so the greeting shares the handshake's read in most attempts
// (9 in 10 measured), not all: five attempts make the case near certain.
func TestBytesWithTheHandshake(t *testing.T) {
	const greeting = "server speaks first"
	// scramblesuit has the same code, and no server to test it against.
	for _, method := range []string{"obfs4"} {
		t.Run(method, func(t *testing.T) {
			srv := startServer(t, method, nil)
			l := Listen(srv, listenLoopback(t))
			defer l.Close()
			dialer := builtinDialers(t)[method]
			for attempt := 0; attempt < 5; attempt++ {
				written := make(chan struct{})
				served := make(chan error, 1)
				go func() {
					c, err := l.Accept()
					if err != nil {
						served <- err
						return
					}
					defer c.Close()
					_, err = io.WriteString(c, greeting)
					close(written)
					served <- err
					// Until the client closes; it may reset the connection,
					// closing with padding unread.
					io.Copy(io.Discard, c)
				}()
				under := func(ctx context.Context, addr string) (net.Conn, error) {
					c, err := Direct(ctx, addr)
					if err != nil {
						return nil, err
					}
					return &holdConn{Conn: c, hold: written}, nil
				}
				ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
				c, err := dialer.Dial(ctx, srv.ClientArgs(), l.Addr().String(), under)
				cancel()
				if err != nil {
					t.Fatal(err)
				}

				// Only a stall reaches the deadline; the module then decodes
				// what it holds and returns it with the timeout.
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 2*len(greeting))
				n, err := c.Read(buf) // one frame: one Read
				c.Close()
				if serr := <-served; serr != nil {
					t.Errorf("attempt %d: server: %v", attempt, serr)
				}
				if err != nil || string(buf[:n]) != greeting {
					t.Fatalf("attempt %d: read %q, %v: the greeting sent with the handshake was not delivered", attempt, buf[:n], err)
				}
			}
		})
	}
}
