package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// noLeaks checks, after everything the test set up has been cleaned up,
// that no goroutine is left.
func noLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// TestDialCancelled: cancelling the context ends the handshake of a
// chain's outer hop, which the server never answers, and nothing is left.
func TestDialCancelled(t *testing.T) {
	noLeaks(t)
	ln := listenLoopback(t)
	silent := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		silent <- c
	}()
	dialer, server := chainOf(t, "obfs4", "obfs4")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		if c := <-silent; c != nil {
			cancel()
			silent <- c
		}
	}()
	_, err := dialer.Dial(ctx, server.ClientArgs(), ln.Addr().String(), nil)
	if c := <-silent; c != nil {
		c.Close()
	}
	var he *HopError
	if !errors.Is(err, context.Canceled) || !errors.As(err, &he) || he.Hop != 1 {
		t.Fatalf("Dial: %v, want hop 1 cancelled", err)
	}
}

// TestListenerLifecycle: the counters follow the connections; Close ends
// the handshakes in progress, and nothing is left.
func TestListenerLifecycle(t *testing.T) {
	noLeaks(t)
	dialer, server := chainOf(t, "obfs3", "obfs4")
	l := Listen(server, listenLoopback(t))
	got := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(got)
			return
		}
		got <- c
	}()
	c, err := dialer.Dial(context.Background(), server.ClientArgs(), l.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	sc := <-got
	io.WriteString(c, "hello")
	buf := make([]byte, 5)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	sc.Write([]byte("hi"))
	if s := l.Stats(); s != (ServerStats{Accepted: 1, Open: 1, Read: 5, Written: 2}) {
		t.Errorf("stats %+v", s)
	}
	sc.Close()
	sc.Close()
	c.Close()
	if s := l.Stats(); s.Open != 0 {
		t.Errorf("open after close: %+v", s)
	}

	// Three connections that never handshake, then Close.
	for i := 0; i < 3; i++ {
		raw, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
	}
	for l.Stats().Accepted < 4 {
		raw, _ := net.Dial("tcp", l.Addr().String()) // a no-op dial: wait for the accepts
		raw.Close()
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if s := l.Stats(); s.Failed != s.Accepted-1 {
		t.Errorf("after Close: %+v, want every handshake in progress failed", s)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

// notOver is a Dialer that dials the network itself, ignoring under.
type notOver struct{}

func (notOver) Dial(ctx context.Context, _ metadata.Args, addr string, _ DialFunc) (Conn, error) {
	c, err := Direct(ctx, addr)
	if err != nil {
		return nil, err
	}
	return newConn(c, c, time.Now()), nil
}

// TestChainErrors: a chain names the hop that failed, checks its
// arguments' hop numbers, and refuses a hop that does not run over the
// hop outside it (closing what it dialled).
func TestChainErrors(t *testing.T) {
	noLeaks(t)
	dialers := builtinDialers(t)
	_, server := chainOf(t, "obfs3", "obfs4")
	addr := serveEcho(t, server)
	chain := ClientChain(dialers["obfs3"], dialers["obfs4"])
	ctx := context.Background()

	args := server.ClientArgs()
	args["1.iat-mode"] = []string{"9"}
	_, err := chain.Dial(ctx, args, addr, nil)
	var he *HopError
	if !errors.As(err, &he) || he.Hop != 1 || !strings.Contains(err.Error(), "obfs4: iat-mode") {
		t.Errorf("bad hop 1 args: %v", err)
	}
	if _, err := chain.Dial(ctx, metadata.Args{"2.cert": {"x"}}, addr, nil); err == nil || !strings.Contains(err.Error(), "names hop 2") {
		t.Errorf("hop 2 of 2: %v", err)
	}
	if _, err := ClientChain().Dial(ctx, nil, addr, nil); !errors.Is(err, ErrEmptyChain) {
		t.Errorf("empty chain: %v", err)
	}
	plain := plainEcho(t)
	if _, err := ClientChain(notOver{}, xorHop).Dial(ctx, nil, plain, nil); !errors.As(err, &he) || he.Hop != 0 ||
		!strings.Contains(err.Error(), "did not run over") {
		t.Errorf("a hop beside the chain: %v", err)
	}
	// Chains nest: (obfs3|obfs4) as hop 0 of a chain whose hop 1 is xor.
	outer := startBytestream(t, xorHop, nil)
	nestedAddr := serveEcho(t, ServerChain(server, outer))
	nested := ClientChain(chain, xorHop)
	c, err := nested.Dial(ctx, metadata.JoinHops([]metadata.Args{server.ClientArgs(), outer.ClientArgs()}), nestedAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exchange(t, c, payload(1<<16), true)
}
