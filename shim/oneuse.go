package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// ErrUsed is returned by a second call to OneUse.Accept.
var ErrUsed = errors.New("one-use listener already accepted (or gave up on) its connection")

// OneUse is a listener for exactly one connection. DESIGN.md, "Client data
// path": "Each shim accepts exactly one connection, under a deadline, then
// closes its listener."
type OneUse struct {
	ln   *net.TCPListener
	addr *net.TCPAddr

	mu   sync.Mutex
	used bool

	closeOnce sync.Once
	closeErr  error
}

// ListenOnce opens a one-use TCP listener on addr, such as "127.0.0.1:0".
// The caller owns it: Accept or Close ends it.
func ListenOnce(addr string) (*OneUse, error) {
	lc := net.ListenConfig{KeepAlive: loopback.KeepAlive(addr)}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("one-use listener: %w", err)
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("one-use listener on %s: got %T, not a TCP listener", addr, ln)
	}
	return &OneUse{ln: tl, addr: tl.Addr().(*net.TCPAddr)}, nil
}

// Addr is the address the listener is bound to.
func (o *OneUse) Addr() *net.TCPAddr { return o.addr }

// Accept waits for the one connection. The listener is closed before Accept
// returns, on every path. Cancelling ctx or reaching its deadline unblocks
// it; the error then wraps ctx's cause. A second call returns ErrUsed.
func (o *OneUse) Accept(ctx context.Context) (*net.TCPConn, error) {
	o.mu.Lock()
	used := o.used
	o.used = true
	o.mu.Unlock()
	if used {
		return nil, fmt.Errorf("one-use listener %s: %w", o.addr, ErrUsed)
	}
	defer o.Close()

	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("one-use listener %s: %w", o.addr, context.Cause(ctx))
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := o.ln.SetDeadline(dl); err != nil {
			return nil, fmt.Errorf("one-use listener %s: set deadline: %w", o.addr, err)
		}
	}
	// Closing the listener is what unblocks AcceptTCP on cancellation;
	// Close is idempotent, so the race with the deferred Close is harmless.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		o.Close()
	})
	conn, err := o.ln.AcceptTCP()
	if !stop() {
		<-fired
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("one-use listener %s: %w: %w", o.addr, context.Cause(ctx), err)
		}
		return nil, fmt.Errorf("one-use listener %s: accept: %w", o.addr, err)
	}
	return conn, nil
}

// Close closes the listener; it is idempotent and returns the first
// close's error every time. A pending Accept returns an error.
func (o *OneUse) Close() error {
	o.closeOnce.Do(func() {
		o.closeErr = o.ln.Close()
	})
	return o.closeErr
}
