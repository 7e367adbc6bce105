package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// ClientChain returns the client side of the chain hops[0]|hops[1]|...:
// the application's bytes enter hops[0], the last hop is on the wire. The
// chain is a Dialer, so it can be a hop of another chain.
func ClientChain(hops ...Dialer) Dialer {
	return clientChain{hops: append([]Dialer(nil), hops...)}
}

type clientChain struct{ hops []Dialer }

var _ Dialer = clientChain{}

// Dial dials the outermost hop over under, then each hop inward over the
// connection of the hop outside it. args are the chain's: "N.key" goes to
// hop N, an unprefixed key to every hop.
func (ch clientChain) Dial(ctx context.Context, args metadata.Args, addr string, under DialFunc) (Conn, error) {
	start := time.Now()
	if len(ch.hops) == 0 {
		return nil, ErrEmptyChain
	}
	perHop, err := metadata.SplitHops(args, len(ch.hops))
	if err != nil {
		return nil, err
	}
	if under == nil {
		under = Direct
	}
	var c Conn
	for i := len(ch.hops) - 1; i >= 0; i-- {
		next := under
		var outer *handOver
		if c != nil {
			outer = &handOver{conn: c}
			next = outer.dial
		}
		inner, err := ch.hops[i].Dial(ctx, perHop[i], addr, next)
		if outer != nil && outer.closeUntaken() && err == nil {
			inner.Close()
			err = errors.New("the hop did not run over the next hop outward")
		}
		if err != nil {
			return nil, &HopError{Hop: i, Err: err}
		}
		c = inner
	}
	return setupConn{Conn: c, setup: time.Since(start)}, nil
}

// handOver gives a hop's connection to the hop inside it, once.
type handOver struct {
	mu    sync.Mutex
	conn  net.Conn
	taken bool
}

func (h *handOver) dial(ctx context.Context, _ string) (net.Conn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.taken {
		return nil, errors.New("transport: a hop dialled beneath it twice")
	}
	h.taken = true
	return h.conn, nil
}

// closeUntaken closes the connection if no hop took it, and reports so.
func (h *handOver) closeUntaken() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.taken {
		return false
	}
	h.taken = true
	h.conn.Close()
	return true
}

// ServerChain returns the server side of the chain hops[0]|hops[1]|...: an
// accepted connection is wrapped by the last hop's server, the result by
// the one before, and so on to hops[0], whose connection carries the
// application's bytes. The chain is a Server, so it can be a hop of
// another chain; closing it closes every hop.
func ServerChain(hops ...Server) Server {
	return serverChain{hops: append([]Server(nil), hops...)}
}

type serverChain struct{ hops []Server }

var _ Server = serverChain{}

// ClientArgs are the hops' client arguments under their hop numbers, the
// way a client chain splits them again (hop 1's cert is "1.cert").
func (ch serverChain) ClientArgs() metadata.Args {
	perHop := make([]metadata.Args, len(ch.hops))
	for i, h := range ch.hops {
		perHop[i] = h.ClientArgs()
	}
	return metadata.JoinHops(perHop)
}

func (ch serverChain) WrapConn(ctx context.Context, raw net.Conn) (Conn, error) {
	start := time.Now()
	if len(ch.hops) == 0 {
		raw.Close()
		return nil, ErrEmptyChain
	}
	c := raw
	var inner Conn
	for i := len(ch.hops) - 1; i >= 0; i-- {
		var err error
		if inner, err = ch.hops[i].WrapConn(ctx, c); err != nil {
			return nil, &HopError{Hop: i, Err: err}
		}
		c = inner
	}
	return setupConn{Conn: inner, setup: time.Since(start)}, nil
}

func (ch serverChain) Close() error {
	var errs []error
	for i, h := range ch.hops {
		if err := h.Close(); err != nil {
			errs = append(errs, fmt.Errorf("hop %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}
