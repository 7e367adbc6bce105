package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
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
// returns at once. Nothing is lost. Without a rate the link only adds
// latency, the cost a fresh chained connection pays in round trips and a
// stream of an open session does not; with one, each direction is also a
// bottleneck of that rate that every connection shares, as a user's line
// is, with a queue of 1.5 round trips' worth of bytes for each
// connection, so that TCP's windows (and a session's) meet a link's
// limits.
type delayLink struct {
	ln     net.Listener
	target string
	linkShape
	up, down bottleneck
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// linkShape is an emulated link: its one-way delay and, when set, its
// rate in bytes per second, each way.
type linkShape struct {
	oneWay time.Duration
	rate   float64
}

func (s linkShape) String() string {
	if s.rate > 0 {
		return fmt.Sprintf("%v RTT, %.0f Mbit/s", 2*s.oneWay, s.rate*8/1e6)
	}
	return fmt.Sprintf("%v RTT", 2*s.oneWay)
}

// parseLinks reads -links: RTT[@Mbit/s], comma separated ("" for none).
func parseLinks(s string) ([]linkShape, error) {
	var links []linkShape
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		rtt, mbit, limited := strings.Cut(f, "@")
		d, err := time.ParseDuration(rtt)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("-links: %q: want a round trip such as 20ms, and @MBIT/S for a rate", f)
		}
		l := linkShape{oneWay: d / 2}
		if limited {
			m, err := strconv.ParseFloat(mbit, 64)
			if err != nil || m <= 0 {
				return nil, fmt.Errorf("-links: %q: the rate after @ is in Mbit/s, such as 100ms@50", f)
			}
			l.rate = m * 1e6 / 8
		}
		links = append(links, l)
	}
	return links, nil
}

// bottleneck is one direction of a rate-limited link: when the last
// byte given to it leaves.
type bottleneck struct {
	mu       sync.Mutex
	departed time.Time
}

// leave is when n bytes that arrive now have left the bottleneck.
func (b *bottleneck) leave(n int, rate float64) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := time.Now()
	if t.Before(b.departed) {
		t = b.departed
	}
	b.departed = t.Add(time.Duration(float64(n) / rate * float64(time.Second)))
	return b.departed
}

// startDelayLink listens on an ephemeral loopback port for target.
func startDelayLink(target string, shape linkShape) (*delayLink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &delayLink{ln: ln, target: target, linkShape: shape, conns: map[net.Conn]struct{}{}}
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
	wg.Go(func() { l.carry(d, c, &l.up, connected.Add(3*l.oneWay)) })
	wg.Go(func() { l.carry(c, d, &l.down, time.Time{}) })
	wg.Wait()
}

// chunk is what one read brought, and when it may be written on.
type chunk struct {
	b   []byte
	due time.Time
}

// carry copies src to dst, each read's bytes a one-way delay (and not
// before notBefore) after they were read, or, with a rate, after they
// have left the bottleneck's queue at that rate, in order; src's end
// half-closes dst as late. An error ends both.
func (l *delayLink) carry(dst, src net.Conn, neck *bottleneck, notBefore time.Time) {
	readSize, queued := 64<<10, 4096 // without a rate: a queue as long as memory allows
	if l.rate > 0 {
		// Small pieces, so that the rate is smooth; a queue of a round
		// trip at the rate (and the bytes on the wire), at least 64 KiB.
		readSize = 16 << 10
		queued = max(4, int(l.rate*3*l.oneWay.Seconds())/readSize)
	}
	queue := make(chan chunk, queued)
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
	buf := make([]byte, readSize)
	for {
		n, err := src.Read(buf)
		left := time.Now()
		if l.rate > 0 && n > 0 {
			left = neck.leave(n, l.rate)
		}
		due := left.Add(l.oneWay)
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
