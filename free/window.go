package free

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/xtaci/smux"
)

// The session window (docs/free.md, "Session window") bounds what one end
// keeps in flight over the whole session: bytes it has written to the
// session's connection that the other end has not yet read from its own.
// smux's per-stream windows bound each stream alone, and eight bulk
// streams with 2 MiB each put 16 MiB between the two ends, most of it in
// the PTs' socket buffers, where smux's shaper cannot put a new stream's
// frames first. It is HTTP/2's connection window (RFC 9113, section 5.2:
// "Flow control is used for both individual streams and the connection as
// a whole"), counted in bytes on the wire rather than in DATA payload, so
// that a byte is credited once it has left the path, whatever becomes of
// its stream.
//
// The client opens a control stream (Command Window) that announces its
// window; the server answers with its own; from then each end writes, on
// that stream, how many bytes it has read from the connection since the
// session opened, and its window, whenever that count has grown by an
// eighth of its window.
// An end whose peer announced no window (an older one refuses the
// command) writes without a limit, as before.

// Session windows. The default is half the stream window (1 MiB with
// the default 2 MiB streams). It binds one stream too, and that is what
// it should do: its credits come every eighth of it, where smux returns
// a stream's window only at half of it, so a stream kept to 1 MiB by the
// session window has less in the path than one kept to 2 MiB by smux
// and carries as much. ptbench over two emulated links, 2-hop chains of
// the test PT, session window 1, 2 and 4 MiB (docs/performance.md,
// "Session window"):
//
//	60 ms, 20 Mbit/s:  1 echoed stream 0.93, 0.81, 0.80x bound;
//	                   8 streams' evenness 0.90, 0.78, 0.81;
//	                   a new stream behind them 471, 798, 1468 ms (bound 845)
//	100 ms, 50 Mbit/s: 1 echoed stream 0.98x, 1 down 0.92x; evenness 0.89;
//	                   a new stream behind them 165 ms (bound 1103)
//
// It costs fast paths: on loopback one stream ran at 0.84-0.86x a bound
// connection with 1 MiB, 0.92-0.94x with 4 MiB. The window does not size
// itself to the path yet; the credits carry it for that.
const (
	MinSessionWindow = MinStreamWindow
	MaxSessionWindow = streamsBuffered * MaxStreamWindow
)

// sessionWindowFor is the window an end announces: n bytes (0: half the
// stream window; negative: none, which the peer takes as no limit).
func sessionWindowFor(n, streamWindow int) uint32 {
	switch {
	case n < 0:
		return 0
	case n == 0:
		if streamWindow <= 0 {
			streamWindow = DefaultStreamWindow
		}
		return uint32(max(streamWindow/2, MinSessionWindow))
	}
	return uint32(n)
}

// CheckSessionWindow says what is wrong with a session window of n bytes
// (0 and negative are the default and none).
func CheckSessionWindow(n int) error {
	if n > 0 && (n < MinSessionWindow || n > MaxSessionWindow) {
		return fmt.Errorf("free: a session window of %d KiB: want %d to %d KiB", n>>10, MinSessionWindow>>10, MaxSessionWindow>>10)
	}
	return nil
}

// grantMax is the most one writer is let write at a time, a frame: the
// writers waiting take turns, in the order they came, a frame each.
const grantMax = maxFrameSize

// sendWindow is what this end may keep in flight on one session. Writers
// of stream data take grants from it (write) before handing bytes to
// smux; smux's own frames (window updates, keepalives, stream opens and
// ends) and the control stream's credits are never held, so that a full
// window in both directions cannot stop the credits that open it.
type sendWindow struct {
	conn *watchedConn // counts the bytes written (wrote)

	mu      sync.Mutex
	limit   int64 // 0: none
	read    int64 // the peer's last credit: the bytes it has read
	pending int64 // granted to writers and not yet written
	queue   []*windowWait
	ended   bool // no limit from now on: the control stream ended
}

type windowWait struct {
	want, got int
	ready     chan struct{} // closed when got is set
}

func newSendWindow(c *watchedConn) *sendWindow { return &sendWindow{conn: c} }

// room is how many more bytes may go in flight now; w.mu is held.
func (w *sendWindow) room() int64 {
	if w.limit == 0 || w.ended {
		return 1 << 62
	}
	inflight := max(w.conn.wrote.Load()+w.pending-w.read, 0)
	return w.limit - inflight
}

// grant is what a writer wanting n bytes gets now (0: it waits): a frame
// at most, less when the window has less room, but not less than a
// quarter of the window (or n). The peer's last credit may leave up to an
// eighth of the window uncounted for good (it credits every eighth), so
// a quarter is always granted in the end, where a whole frame might never
// be with a window of a few frames. w.mu is held.
func (w *sendWindow) grant(n int) int {
	want := min(n, grantMax)
	g := int(min(int64(want), w.room()))
	if g < want && int64(g) < w.limit/4 {
		return 0
	}
	w.pending += int64(g)
	return g
}

// serve grants the waiting writers what fits, first come first; w.mu is
// held.
func (w *sendWindow) serve() {
	for len(w.queue) > 0 {
		head := w.queue[0]
		g := w.grant(head.want)
		if g == 0 {
			return
		}
		head.got = g
		close(head.ready)
		w.queue[0] = nil
		w.queue = w.queue[1:]
	}
}

// acquire waits for a grant of up to n bytes, or for stop.
func (w *sendWindow) acquire(n int, stop <-chan struct{}) (int, error) {
	w.mu.Lock()
	if len(w.queue) == 0 {
		if g := w.grant(n); g > 0 {
			w.mu.Unlock()
			return g, nil
		}
	}
	wt := &windowWait{want: n, ready: make(chan struct{})}
	w.queue = append(w.queue, wt)
	w.mu.Unlock()
	select {
	case <-wt.ready:
		return wt.got, nil
	case <-stop:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-wt.ready: // granted meanwhile: give it back
		w.pending -= int64(wt.got)
		w.serve()
	default:
		for i, q := range w.queue {
			if q == wt {
				w.queue = append(w.queue[:i], w.queue[i+1:]...)
				break
			}
		}
	}
	return 0, io.ErrClosedPipe
}

// release ends a grant of g bytes, once they are written (or failed).
// Until then they count twice, as written and as granted, and a credit
// that came meanwhile may have found too little room: the writers
// waiting are served again.
func (w *sendWindow) release(g int) {
	w.mu.Lock()
	w.pending -= int64(g)
	w.serve()
	w.mu.Unlock()
}

// write writes b to st in grants, each a frame at most. A writer waiting
// for a grant ends with st (its close, or its session's), not with st's
// write deadline, which none of the gated writers sets.
func (w *sendWindow) write(st *smux.Stream, b []byte) (int, error) {
	sent := 0
	for len(b) > 0 {
		g, err := w.acquire(len(b), st.GetDieCh())
		if err != nil {
			return sent, err
		}
		n, err := st.Write(b[:g])
		w.release(g)
		sent += n
		if err != nil {
			return sent, err
		}
		b = b[g:]
	}
	return sent, nil
}

// start sets the window the peer announced (0: none).
func (w *sendWindow) start(limit uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.limit = 0
	if limit > 0 {
		w.limit = max(int64(limit), MinSessionWindow)
	}
	w.serve()
}

// credit takes the peer's count of the bytes it has read, and its window
// now (0: none).
func (w *sendWindow) credit(read int64, window uint32) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if read < w.read {
		return fmt.Errorf("%w: the peer's count of bytes read went back from %d to %d", ErrCredit, w.read, read)
	}
	w.read = read
	w.limit = 0
	if window > 0 {
		w.limit = max(int64(window), MinSessionWindow)
	}
	w.serve()
	return nil
}

// end lifts the limit for good and lets every waiting writer go.
func (w *sendWindow) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	w.serve()
}

// ErrCredit: a credit on the control stream that cannot be right.
var ErrCredit = errors.New("free: malformed session window credit")

// creditLen is a credit's length: READ, 8 bytes, then WINDOW, 4 bytes,
// both big endian.
const creditLen = 12

// runWindow runs one end's side of an established control stream: it
// applies the peer's window and credits to w, and credits what this end
// reads (own is the window it announced) until the stream or session ends;
// then w has no limit.
func runWindow(st *smux.Stream, c *watchedConn, w *sendWindow, own, peer uint32, log *slog.Logger) {
	defer w.end()
	if own > 0 {
		c.creditEvery.Store(int64(own / 8))
	}
	w.start(peer)
	done := make(chan struct{})
	var credits sync.WaitGroup
	defer credits.Wait()
	defer st.Close() // ends a credit's write that waits on the stream's window
	defer close(done)
	credits.Go(func() { sendCredits(st, c, own, done) })
	var b [creditLen]byte
	for {
		if _, err := io.ReadFull(st, b[:]); err != nil {
			return // the session's end, or a peer that ended the control
		}
		if err := w.credit(int64(binary.BigEndian.Uint64(b[:8])), binary.BigEndian.Uint32(b[8:])); err != nil {
			log.Warn("session window: a credit that cannot be right; writing without a session window from now on", "err", err)
			st.Close()
			return
		}
	}
}

// sendCredits writes this end's count of bytes read now, with its window
// (own, as announced: a later end may change its window by a credit), and
// again each time the count has grown by creditEvery, until done or the
// stream ends.
func sendCredits(st *smux.Stream, c *watchedConn, own uint32, done <-chan struct{}) {
	var b [creditLen]byte
	binary.BigEndian.PutUint32(b[8:], own)
	for {
		binary.BigEndian.PutUint64(b[:8], uint64(c.read.Load()))
		if _, err := st.Write(b[:]); err != nil {
			return
		}
		select {
		case <-c.creditDue:
		case <-done:
			return
		case <-st.GetDieCh():
			return
		}
	}
}

// gatedStream is a stream whose writes wait for the session window.
type gatedStream struct {
	*smux.Stream
	w *sendWindow
}

func (g gatedStream) Write(b []byte) (int, error) { return g.w.write(g.Stream, b) }
