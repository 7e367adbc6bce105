package free

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xtaci/smux"

	"github.com/ptcombiner/ptcombiner/internal/freetest"
	"github.com/ptcombiner/ptcombiner/shim"
)

// countingConn is a watchedConn that writes nowhere: the window's test
// sets what was written.
func countingConn(t *testing.T) *watchedConn {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return watch(a)
}

// The window grants up to its limit less what is in flight, a frame at a
// time; a credit opens it again; in flight counts what was written and
// what is granted and not yet written.
func TestSendWindowLimit(t *testing.T) {
	c := countingConn(t)
	w := newSendWindow(c)
	never := make(chan struct{})
	if g, err := w.acquire(1<<20, never); err != nil || g != grantMax {
		t.Fatalf("before any window: acquire = %d, %v; want a frame, %d", g, err, grantMax)
	}
	w.release(grantMax)
	const limit = 4 * grantMax
	w.start(limit)
	c.wrote.Store(3 * grantMax)
	g, err := w.acquire(1<<20, never)
	if err != nil || g != grantMax {
		t.Fatalf("acquire with a frame of room = %d, %v", g, err)
	}
	got := make(chan int, 1)
	go func() {
		g, _ := w.acquire(100, never)
		got <- g
	}()
	waitQueued(t, w, 1)   // a full window: the writer waits
	c.wrote.Add(grantMax) // the first grant's frame is written,
	w.release(grantMax)   // then released: the window is still full
	w.mu.Lock()
	waiting := len(w.queue)
	w.mu.Unlock()
	if waiting != 1 {
		t.Fatal("a full window let the writer go")
	}
	if err := w.credit(grantMax, limit); err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-got:
		if g != 100 {
			t.Errorf("granted %d of 100", g)
		}
	case <-time.After(ceiling):
		t.Fatal("a credit did not open the window")
	}
	if err := w.credit(grantMax-1, limit); !errors.Is(err, ErrCredit) {
		t.Errorf("a credit that went back: %v, want ErrCredit", err)
	}
}

// A grant's bytes count twice while its writer writes them (written, and
// still granted); a credit that comes then finds too little room, and the
// writer's release serves the writers waiting.
func TestSendWindowRelease(t *testing.T) {
	c := countingConn(t)
	w := newSendWindow(c)
	never := make(chan struct{})
	const g = grantMax
	w.start(4 * g)
	c.wrote.Store(3 * g)
	if got, _ := w.acquire(g, never); got != g {
		t.Fatalf("granted %d", got)
	}
	c.wrote.Add(g) // the writer's frame is written; it has not released yet
	got := make(chan int, 1)
	go func() {
		n, _ := w.acquire(g, never)
		got <- n
	}()
	waitQueued(t, w, 1)
	if err := w.credit(g, 4*g); err != nil {
		t.Fatal(err)
	}
	w.release(g)
	select {
	case n := <-got:
		if n != g {
			t.Errorf("granted %d, want %d", n, g)
		}
	case <-time.After(ceiling):
		t.Fatal("a release left a writer waiting with room in the window")
	}
}

// A credit carries the peer's window now: a larger one lets waiting
// writers go, 0 lifts the limit.
func TestSendWindowResized(t *testing.T) {
	c := countingConn(t)
	w := newSendWindow(c)
	never := make(chan struct{})
	w.start(MinSessionWindow)
	c.wrote.Store(MinSessionWindow) // full
	got := make(chan int, 2)
	go func() { n, _ := w.acquire(grantMax, never); got <- n }()
	waitQueued(t, w, 1)
	if err := w.credit(0, 2*MinSessionWindow); err != nil {
		t.Fatal(err)
	}
	if n := <-got; n != grantMax {
		t.Errorf("granted %d after the window grew", n)
	}
	w.release(grantMax)
	c.wrote.Add(10 * MinSessionWindow)
	w.credit(0, 0)
	if n, _ := w.acquire(grantMax, never); n != grantMax {
		t.Errorf("granted %d with no window", n)
	}
}

// Writers that wait are served in the order they came, a frame each, so
// that streams take turns; a writer that stops waiting leaves the queue,
// and end lets every writer go.
func TestSendWindowTurns(t *testing.T) {
	c := countingConn(t)
	w := newSendWindow(c)
	w.start(MinSessionWindow)
	never := make(chan struct{})
	c.wrote.Store(MinSessionWindow) // full
	order := make(chan int, 8)
	stop := make(chan struct{})
	gone := make(chan error, 1)
	for i := range 4 {
		if i == 2 {
			go func() { _, err := w.acquire(grantMax, stop); gone <- err }()
			waitQueued(t, w, i+1)
			continue
		}
		go func() {
			if _, err := w.acquire(grantMax, never); err == nil {
				order <- i
			}
		}()
		waitQueued(t, w, i+1)
	}
	close(stop)
	if err := <-gone; !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("a writer that stopped waiting: %v", err)
	}
	var seen []int
	for range 3 {
		c.wrote.Add(grantMax)
		w.credit(c.wrote.Load()-MinSessionWindow+grantMax, MinSessionWindow) // one frame of room
		select {
		case i := <-order:
			seen = append(seen, i)
		case <-time.After(ceiling):
			t.Fatalf("no writer served after %v", seen)
		}
		w.release(grantMax)
	}
	if fmt.Sprint(seen) != "[0 1 3]" {
		t.Errorf("writers served in the order %v, want [0 1 3]", seen)
	}
	c.wrote.Add(grantMax) // full again
	go func() { w.acquire(grantMax, never); order <- 9 }()
	waitQueued(t, w, 1)
	w.end()
	select {
	case <-order:
	case <-time.After(ceiling):
		t.Fatal("end left a writer waiting")
	}
}

// waitQueued waits until n writers wait on w.
func waitQueued(t *testing.T, w *sendWindow, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d writers waiting", n), func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.queue) == n
	})
}

// The default window is half the stream window, at least the least
// window; negative is none; the range is checked.
func TestSessionWindowFor(t *testing.T) {
	if got := sessionWindowFor(0, 0); got != DefaultStreamWindow/2 {
		t.Errorf("default: %d", got)
	}
	if got := sessionWindowFor(0, 8<<20); got != 4<<20 {
		t.Errorf("default with 8 MiB streams: %d", got)
	}
	if got := sessionWindowFor(0, MinStreamWindow); got != MinSessionWindow {
		t.Errorf("default with the least stream window: %d", got)
	}
	if got := sessionWindowFor(-1, 0); got != 0 {
		t.Errorf("none: %d", got)
	}
	for _, n := range []int{MinSessionWindow - 1, MaxSessionWindow + 1} {
		if CheckSessionWindow(n) == nil {
			t.Errorf("CheckSessionWindow(%d) = nil", n)
		}
	}
	for _, n := range []int{-1, 0, MinSessionWindow, MaxSessionWindow} {
		if err := CheckSessionWindow(n); err != nil {
			t.Errorf("CheckSessionWindow(%d): %v", n, err)
		}
	}
}

// backlogConn is the client's end of a slow path: its writes return at
// once, into a queue that a goroutine drains to the connection at about
// 8 MB/s, so that bytes pile up between the two ends as they do in a
// slow link's queues and a PT's socket buffers. peak is the most that
// was queued at once.
type backlogConn struct {
	net.Conn
	mu      sync.Mutex
	cond    *sync.Cond
	queue   [][]byte
	backlog int
	peak    int
	closed  bool
	drained chan struct{}
}

func newBacklogConn(c net.Conn) *backlogConn {
	b := &backlogConn{Conn: c, drained: make(chan struct{})}
	b.cond = sync.NewCond(&b.mu)
	go b.drain()
	return b
}

func (b *backlogConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, net.ErrClosed
	}
	b.queue = append(b.queue, bytes.Clone(p))
	b.backlog += len(p)
	b.peak = max(b.peak, b.backlog)
	b.cond.Signal()
	return len(p), nil
}

func (b *backlogConn) drain() {
	defer close(b.drained)
	const piece = 16 << 10
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && !b.closed {
			b.cond.Wait()
		}
		if b.closed {
			b.mu.Unlock()
			return
		}
		p := b.queue[0]
		b.queue = b.queue[1:]
		b.mu.Unlock()
		for len(p) > 0 {
			n := min(piece, len(p))
			if _, err := b.Conn.Write(p[:n]); err != nil {
				b.Close()
				return
			}
			p = p[n:]
			b.mu.Lock()
			b.backlog -= n
			b.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}
}

func (b *backlogConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.cond.Broadcast()
	b.mu.Unlock()
	return b.Conn.Close()
}

func (b *backlogConn) Peak() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// Over a slow path, 8 streams uploading at once keep no more than the
// bridge's session window between the two ends, and carry their bytes
// exactly; with no session window (-1 both ends, as against an older
// bridge) the same streams pile up their stream windows there, which is
// what the window is for (and shows that this test can tell).
func TestSessionWindowBoundsInFlight(t *testing.T) {
	const window = 256 << 10
	echo := tcpEcho(t)
	for _, tc := range []struct {
		name    string
		window  int
		bounded bool
	}{{"256KiB", window, true}, {"none", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			var slow atomic.Pointer[backlogConn]
			r := newRig(t, &Server{Policy: loopbackPolicy(t), SessionWindow: tc.window}, func(k *Keeper, _ *Proxy) {
				k.SessionWindow = tc.window
				inner := k.Dial
				k.Dial = func(ctx context.Context) (net.Conn, error) {
					c, err := inner(ctx)
					if err != nil {
						return nil, err
					}
					b := newBacklogConn(c)
					slow.Store(b)
					return b, nil
				}
			})
			errs := freetest.Load(8, 8, func(i int) error {
				c, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(ceiling))
				data := bytes.Repeat([]byte{byte(i), 7, 8, 9}, 256<<10) // 1 MiB
				go c.Write(data)
				back := make([]byte, len(data))
				if _, err := io.ReadFull(c, back); err != nil {
					return fmt.Errorf("stream %d: %w", i, err)
				}
				if !bytes.Equal(back, data) {
					return fmt.Errorf("stream %d: the bytes differ", i)
				}
				return nil
			})
			if len(errs) > 0 {
				t.Fatalf("%d of 8 streams failed; first: %v", len(errs), errs[0])
			}
			peak := slow.Load().Peak()
			t.Logf("at most %d KiB queued between the ends", peak>>10)
			// Beyond the window: smux's own frames and the credits,
			// which are never held.
			if tc.bounded && peak > window+grantMax {
				t.Errorf("%d KiB queued between the ends, with a session window of %d KiB", peak>>10, window>>10)
			}
			if !tc.bounded && peak < 4*window {
				t.Errorf("without a session window only %d KiB queued: this test cannot tell", peak>>10)
			}
		})
	}
}

// Streams whose writers wait for a full session window when the session
// breaks fail with a reset, and leave nothing behind (goleak, when the
// package's tests end); the next stream opens a new session.
func TestSessionWindowBreak(t *testing.T) {
	echo := tcpEcho(t)
	r := newRig(t, &Server{Policy: loopbackPolicy(t), SessionWindow: MinSessionWindow}, func(k *Keeper, _ *Proxy) {
		inner := k.Dial
		k.Dial = func(ctx context.Context) (net.Conn, error) {
			c, err := inner(ctx)
			if err != nil {
				return nil, err
			}
			return newBacklogConn(c), nil
		}
	})
	conns := make([]net.Conn, 8)
	wrote := make([]chan error, 8)
	for i := range conns {
		c, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i], wrote[i] = c, make(chan error, 1)
		go func() { _, err := c.Write(make([]byte, 4<<20)); wrote[i] <- err }()
	}
	r.keeper.mu.Lock()
	sess := r.keeper.sess
	r.keeper.mu.Unlock()
	waitFor(t, "writers waiting for the session window", func() bool {
		sess.window.mu.Lock()
		defer sess.window.mu.Unlock()
		return len(sess.window.queue) > 0
	})
	r.mu.Lock()
	r.accepted[0].Close() // the bridge goes away
	r.mu.Unlock()
	for i, c := range conns {
		// The kernel reports a reset once, to the read or to the write
		// that comes first.
		c.SetDeadline(time.Now().Add(ceiling))
		_, rerr := io.Copy(io.Discard, c)
		werr := <-wrote[i]
		if !errors.Is(rerr, syscall.ECONNRESET) && !errors.Is(werr, syscall.ECONNRESET) {
			t.Errorf("stream %d: read %v, write %v, want a reset", i, rerr, werr)
		}
	}
	r.echoAgain(echo)
}

// A credit byte by byte, as docs/free.md gives it: READ (8 bytes) and
// WINDOW (4), big endian; after 1 MiB read with a 1 MiB window,
// 00 00 00 00 00 10 00 00 00 10 00 00.
func TestCreditWire(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	client, err := smux.Client(a, muxConfig(0))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := smux.Server(b, muxConfig(0))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	c := watch(a)
	c.read.Store(1 << 20)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { sendCredits(st, c, 1<<20, done) })
	defer wg.Wait()
	defer close(done)
	peer, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(ceiling))
	got := make([]byte, creditLen)
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	want := []byte{0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("credit % x, want % x", got, want)
	}
}
