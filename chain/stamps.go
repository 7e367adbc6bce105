package chain

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// A stamp names one connection that the server dialled into one of its
// children exactly: the child (each child has its own Extended ORPort
// listener, so the arrival tells which child it is), the method (each method
// of a child is a listener of its own), and the local ip:port of the dialled
// socket, which the child reports back as USERADDR. Linux hands the same
// source port to connections towards different destinations, so the port
// alone is not unique across hops (DESIGN.md, "Server matching"); towards one
// destination the kernel keeps it unique while the connection lives.
type stamp struct {
	child  int
	method string
	addr   netip.AddrPort
}

// hopLink is what a stamp leads to: the chain connection and the position
// whose child will come back on its Extended ORPort.
type hopLink struct {
	conn *serverConn
	pos  int
}

// stampBook records the stamps of dialled connections until their child
// comes back for them. A lookup may arrive before the record (the child can
// dial its Extended ORPort as soon as it accepts), so Take waits briefly.
type stampBook struct {
	mu      sync.Mutex
	entries map[stamp]hopLink
	waiters map[stamp]chan hopLink
}

func newStampBook() *stampBook {
	return &stampBook{entries: map[stamp]hopLink{}, waiters: map[stamp]chan hopLink{}}
}

var errStampInUse = errors.New("stamp already recorded")

// Put records st. The kernel keeps st unique among live connections, so a
// second Put of a live stamp is a bug worth refusing loudly.
func (b *stampBook) Put(st stamp, l hopLink) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w, ok := b.waiters[st]; ok {
		delete(b.waiters, st)
		w <- l // buffered
		return nil
	}
	if _, ok := b.entries[st]; ok {
		return errStampInUse
	}
	b.entries[st] = l
	return nil
}

// Drop forgets st when its connection ends without its child coming back.
func (b *stampBook) Drop(st stamp) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.entries, st)
}

// Expire forgets st if it still waits for its child and leads to l (not
// to a later connection that got the same stamp), and reports whether it
// did; a Take that comes afterwards finds nothing.
func (b *stampBook) Expire(st stamp, l hopLink) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if have, ok := b.entries[st]; ok && have == l {
		delete(b.entries, st)
		return true
	}
	return false
}

// wrongMatcher is nil in the products; nothing but a _test.go file sets it.
// The attribution tests set it, before they start a Server, to a matcher
// that is wrong on purpose (by arrival order, as the historical combiner
// matched), to show that they would catch one.
var wrongMatcher func(b *stampBook, st stamp, wait time.Duration) (hopLink, bool)

// Take removes and returns the link for st, waiting up to wait for it to be
// recorded. A stamp is taken at most once.
func (b *stampBook) Take(st stamp, wait time.Duration) (hopLink, bool) {
	if wrongMatcher != nil {
		return wrongMatcher(b, st, wait)
	}
	b.mu.Lock()
	if l, ok := b.entries[st]; ok {
		delete(b.entries, st)
		b.mu.Unlock()
		return l, true
	}
	if _, ok := b.waiters[st]; ok { // someone already claims this stamp
		b.mu.Unlock()
		return hopLink{}, false
	}
	w := make(chan hopLink, 1)
	b.waiters[st] = w
	b.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l := <-w:
		return l, true
	case <-t.C:
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.waiters[st] == w {
			delete(b.waiters, st)
			return hopLink{}, false
		}
		return <-w, true // Put delivered while we timed out
	}
}

// TakeAnyMethod serves a child that sent no TRANSPORT: it takes the one
// stamp of that child and address, whatever its method, and refuses when
// there is more than one (it would have to guess).
func (b *stampBook) TakeAnyMethod(child int, addr netip.AddrPort) (hopLink, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var found []stamp
	for st := range b.entries {
		if st.child == child && st.addr == addr {
			found = append(found, st)
		}
	}
	if len(found) != 1 {
		return hopLink{}, false
	}
	l := b.entries[found[0]]
	delete(b.entries, found[0])
	return l, true
}

// Len is the number of stamps waiting for their child (for tests and stats).
func (b *stampBook) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}
