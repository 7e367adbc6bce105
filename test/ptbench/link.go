package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// A delayLink stands for the network between a user and the bridge (the
// censor's link), which loopback lacks: it listens on loopback and joins
// each connection to target, holding every byte for oneWay in each
// direction. A connection pays its TCP handshake as on a real link: the
// bytes of its first flight reach target no sooner than 3 x oneWay after
// the connect (SYN, SYN-ACK, then the data), where loopback's connect
// returns at once. Nothing is lost or limited in rate: the link only adds
// latency, the cost a fresh chained connection pays in round trips and a
// stream of an open session does not.
type delayLink struct {
	ln     net.Listener
	target string
	oneWay time.Duration
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startDelayLink listens on an ephemeral loopback port for target.
func startDelayLink(target string, oneWay time.Duration) (*delayLink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &delayLink{ln: ln, target: target, oneWay: oneWay, conns: map[net.Conn]struct{}{}}
	l.wg.Go(l.serve)
	return l, nil
}

// Addr is where the user's side connects instead of target.
func (l *delayLink) Addr() string { return l.ln.Addr().String() }

// Close ends the listener and every connection, and waits for them.
func (l *delayLink) Close() {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	l.mu.Unlock()
	l.ln.Close()
	l.wg.Wait()
}

// track records c for Close; false when the link is closing (c is closed).
func (l *delayLink) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *delayLink) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	c.Close()
}

func (l *delayLink) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		if !l.track(c) {
			continue
		}
		l.wg.Go(func() { l.join(c, time.Now()) })
	}
}

// join carries one connection: the SYN's flight, then both directions.
func (l *delayLink) join(c net.Conn, connected time.Time) {
	defer l.untrack(c)
	time.Sleep(l.oneWay) // the SYN reaches the bridge
	d, err := loopback.Dialer(l.target).Dial("tcp", l.target)
	if err != nil {
		return
	}
	if !l.track(d) {
		return
	}
	defer l.untrack(d)
	var wg sync.WaitGroup
	// The user's first bytes leave once its connect has returned (a round
	// trip after the SYN) and arrive a one-way delay later.
	wg.Go(func() { l.carry(d, c, connected.Add(3*l.oneWay)) })
	wg.Go(func() { l.carry(c, d, time.Time{}) })
	wg.Wait()
}

// chunk is what one read brought, and when it may be written on.
type chunk struct {
	b   []byte
	due time.Time
}

// carry copies src to dst, each read's bytes a one-way delay (and not
// before notBefore) after they were read, in order; src's end half-closes
// dst as late. An error ends both.
func (l *delayLink) carry(dst, src net.Conn, notBefore time.Time) {
	queue := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() { // the writer: the link's far end
		defer close(done)
		for ch := range queue {
			if w := time.Until(ch.due); w > 0 {
				time.Sleep(w)
			}
			if ch.b == nil {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				return
			}
			if _, err := dst.Write(ch.b); err != nil {
				src.Close()
				dst.Close()
				return
			}
		}
	}()
	defer func() { <-done }()
	defer close(queue)
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		due := time.Now().Add(l.oneWay)
		if due.Before(notBefore) {
			due = notBefore
		}
		if n > 0 {
			select {
			case queue <- chunk{b: append([]byte(nil), buf[:n]...), due: due}:
			case <-done:
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				select {
				case queue <- chunk{due: due}:
				case <-done:
				}
			} else {
				dst.Close()
			}
			return
		}
	}
}
