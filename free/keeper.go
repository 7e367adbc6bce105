package free

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xtaci/smux"

	"github.com/ptcombiner/ptcombiner/shim"
)

// Defaults for Keeper's zero fields.
const (
	DefaultSessionWait  = 30 * time.Second
	DefaultReplyTimeout = 30 * time.Second
	DefaultMinBackoff   = 250 * time.Millisecond
	DefaultMaxBackoff   = 15 * time.Second
)

// ErrClosed is returned by a closed Keeper.
var ErrClosed = errors.New("free: session keeper closed")

// Keeper keeps the client's one session to a bridge: it dials it (one
// chained connection) when a stream first needs it, keeps it, and when it
// breaks, fails the streams in flight and dials again, with exponential
// backoff between failed dials, when a stream next needs it. A new stream
// waits for a session up to SessionWait. Its fields are read at the first
// Open; do not change them after.
type Keeper struct {
	// Dial sets up one chained connection to the bridge.
	Dial   func(ctx context.Context) (net.Conn, error)
	Label  string       // names the session in the log (the chain)
	Logger *slog.Logger // nil: slog.Default()
	// SessionWait bounds how long a new stream waits for a session.
	SessionWait time.Duration
	// ReplyTimeout bounds the server's reply to a stream header (its
	// resolving and dialling the destination).
	ReplyTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between failed dials: it
	// doubles from MinBackoff at each failure, to MaxBackoff, with 20%
	// jitter. The first dial after a session broke does not wait.
	MinBackoff, MaxBackoff time.Duration
	// StreamWindow is each stream's receive window in bytes, what the
	// bridge may send ahead on one stream (0: DefaultStreamWindow;
	// CheckStreamWindow gives the range).
	StreamWindow int
	// SessionWindow is what the bridge may keep in flight to this end
	// over the whole session, in bytes (0: half StreamWindow; negative:
	// no session window either way, and no control stream;
	// CheckSessionWindow gives the range).
	SessionWindow int

	once   sync.Once
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	log    *slog.Logger
	wg     sync.WaitGroup // the dial loop and the session watchers

	mu       sync.Mutex
	sess     *clientSession
	dialing  chan struct{} // closed when the running dial loop ends; nil when none runs
	waiters  int           // Opens waiting for a session
	failures int           // failed dials since the last session
	nextTry  time.Time
	lastErr  error
	closed   bool
}

// clientSession is one session and the connection it runs over.
type clientSession struct {
	mux      *smux.Session
	conn     *watchedConn
	window   *sendWindow   // what this end may send: its own window until the bridge announces one
	control  atomic.Bool   // the control stream is open (one of mux's streams)
	done     chan struct{} // closed when the session has broken or been closed
	answered atomic.Bool   // the bridge has replied to a stream header

	advertised chan struct{} // closed once the bridge answered Advertise, or could not
	advert     *Policy       // the bridge's policy, set before advertised closes; nil: none
}

// judge waits for the bridge's advertisement, then says whether h can be
// granted before the bridge replies, or refuses it by the advertised
// policy.
func (s *clientSession) judge(ctx context.Context, wait <-chan time.Time, h Header) (bool, error) {
	if h.Command != Connect || h.Dest.Name != "" {
		return false, nil // a name is resolved, and judged, on the bridge
	}
	select {
	case <-s.advertised:
	case <-s.done:
		return false, nil // the handshake fails, and Open tries a new session
	case <-ctx.Done():
		return false, fmt.Errorf("free: waiting for the bridge's policy: %w", context.Cause(ctx))
	case <-wait:
		return false, errors.New("free: no policy from the bridge")
	}
	if s.advert == nil {
		return false, nil
	}
	d := s.advert.Check(h.Dest.IP, h.Dest.Port)
	if !d.Allowed {
		return false, &RefusedError{Rep: shim.RepNotAllowed, Rule: d.Rule}
	}
	return true, nil
}

// openGranted opens a stream granted before the bridge replies and sends
// its header with the application's first bytes.
func (s *clientSession) openGranted(hdr []byte, g *Grant) (*Stream, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		s.mux.Close()
		return nil, fmt.Errorf("free: open a stream: %w", err)
	}
	if g.First != nil {
		first, err := g.First()
		if err != nil {
			st.Close()
			return nil, err
		}
		hdr = append(hdr, first...)
	}
	if _, err := st.Write(hdr); err != nil {
		st.Close()
		return nil, fmt.Errorf("free: send the stream header: %w", err)
	}
	return &Stream{Stream: st, sess: s, granted: true}, nil
}

// fetchAdvert asks the bridge for its policy, then closes s.advertised.
func (k *Keeper) fetchAdvert(s *clientSession) {
	defer close(s.advertised)
	st, err := s.mux.OpenStream()
	if err != nil {
		return
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(k.ReplyTimeout))
	hdr, _ := AppendHeader(nil, Header{Command: Advertise})
	if _, err := st.Write(hdr); err != nil {
		return
	}
	rep, err := readReply(st)
	if err != nil {
		return
	}
	s.answered.Store(true)
	if rep != shim.RepSucceeded {
		k.log.Info("the bridge does not advertise its policy: each stream waits for the bridge's reply", "socks_reply", rep)
		return
	}
	p, err := ReadAdvert(st)
	if err != nil {
		k.log.Warn("the bridge's policy advertisement does not parse: each stream waits for the bridge's reply", "err", err)
		return
	}
	s.advert = p
	k.log.Debug("the bridge advertised its policy", "rules", len(p.Rules))
}

// control opens the session's control stream and runs the session window
// over it (window.go) until the session ends. A bridge that refuses it (an
// older one: REP 0x07) leaves the session without one, either way.
func (k *Keeper) control(s *clientSession) {
	defer s.window.end()
	st, err := s.mux.OpenStream()
	if err != nil {
		return
	}
	s.control.Store(true)
	defer s.control.Store(false)
	defer st.Close()
	own := sessionWindowFor(k.SessionWindow, k.StreamWindow)
	hdr, _ := AppendHeader(nil, Header{Command: Window, Window: own})
	st.SetDeadline(time.Now().Add(k.ReplyTimeout))
	if _, err := st.Write(hdr); err != nil {
		return
	}
	rep, err := readReply(st)
	if err != nil {
		return
	}
	if rep != shim.RepSucceeded {
		k.log.Info("the bridge does not take a session window: only each stream's window bounds what is in flight", "socks_reply", rep)
		return
	}
	var b [4]byte
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return
	}
	st.SetDeadline(time.Time{})
	peer := binary.BigEndian.Uint32(b[:])
	k.log.Debug("session window", "client_window", own, "bridge_window", peer)
	runWindow(st, s.conn, s.window, own, peer, k.log)
}

func (k *Keeper) init() {
	k.once.Do(func() {
		k.ctx, k.cancel = context.WithCancel(context.Background())
		k.log = k.Logger
		if k.log == nil {
			k.log = slog.Default()
		}
		k.log = k.log.With("chain", k.Label)
		if k.SessionWait <= 0 {
			k.SessionWait = DefaultSessionWait
		}
		if k.ReplyTimeout <= 0 {
			k.ReplyTimeout = DefaultReplyTimeout
		}
		if k.MinBackoff <= 0 {
			k.MinBackoff = DefaultMinBackoff
		}
		if k.MaxBackoff < k.MinBackoff {
			k.MaxBackoff = max(DefaultMaxBackoff, k.MinBackoff)
		}
	})
}

// Stream is a stream the server accepted. When its session breaks the
// stream fails, and its application should hear so as an error, not an
// end: smux reports a connection that ended as io.EOF on every stream.
type Stream struct {
	*smux.Stream
	sess *clientSession
	// granted: the stream was granted before the bridge replied
	// (Keeper.Start); its reply is still to be read, by the first Read
	// or WriteTo, which fail with a *RefusedError when it refuses.
	granted bool
}

// Write writes b to the stream within the session window.
func (s *Stream) Write(b []byte) (int, error) { return s.sess.window.write(s.Stream, b) }

// Read reads the stream's bytes, after the bridge's reply to an
// optimistic grant.
func (s *Stream) Read(b []byte) (int, error) {
	if err := s.reply(); err != nil {
		return 0, err
	}
	return s.Stream.Read(b)
}

// WriteTo writes the stream's bytes to w (smux's, without a copy), after
// the bridge's reply to an optimistic grant.
func (s *Stream) WriteTo(w io.Writer) (int64, error) {
	if err := s.reply(); err != nil {
		return 0, err
	}
	return s.Stream.WriteTo(w)
}

// reply reads the bridge's reply to a granted stream, once; it is called
// from the stream's one reader.
func (s *Stream) reply() error {
	if !s.granted {
		return nil
	}
	s.granted = false
	rep, err := readReply(s.Stream)
	if err != nil {
		return err
	}
	s.sess.answered.Store(true)
	if rep != shim.RepSucceeded {
		return &RefusedError{Rep: rep, Granted: true}
	}
	return nil
}

// Broken is closed once the stream's session has broken or closed.
func (s *Stream) Broken() <-chan struct{} { return s.sess.done }

// broke reports whether the session can no longer carry the stream.
func (s *Stream) broke() bool { return !s.sess.live() }

// RefusedError is the server's non-zero reply to a stream header, or the
// client's refusal under the bridge's advertised policy.
type RefusedError struct {
	Rep byte
	// Rule, when set: the client refused the stream itself, by this rule
	// of the bridge's advertised policy, and sent nothing.
	Rule string
	// Granted: the refusal came after an optimistic grant, from a Read of
	// the stream; the application had been told the CONNECT succeeded.
	Granted bool
}

func (e *RefusedError) Error() string {
	if e.Rule != "" {
		return "free: refused by " + e.Rule + " (advertised; refused on the client): " + (&shim.ReplyError{Code: e.Rep}).Error()
	}
	what := "the server refused the stream"
	if e.Granted {
		what = "the server refused a stream already granted"
	}
	return "free: " + what + ": " + (&shim.ReplyError{Code: e.Rep}).Error()
}

// ReplyCode is the SOCKS5 reply for an application whose stream could not
// open with err.
func ReplyCode(err error) byte {
	var re *RefusedError
	if errors.As(err, &re) {
		return re.Rep
	}
	return shim.ReplyCodeFor(err)
}

// Open opens a stream with header h, over the session (dialled first when
// there is none), and returns it once the server accepted it; a refusal
// is a *RefusedError.
func (k *Keeper) Open(ctx context.Context, h Header) (*Stream, error) {
	return k.open(ctx, h, nil)
}

// Start is Open with an optimistic grant: when the session's bridge
// advertised its policy and h is a Connect to an IP address, Start judges
// the destination by that policy and does not wait for the bridge. A
// denied destination is a *RefusedError (REP 0x02, Rule set) and nothing
// is sent. For an allowed one Start calls g.Tell (which tells the
// application, so that its first bytes come while the stream opens),
// opens the stream, calls g.First for the application's first bytes,
// sends them with the header (one frame), and returns the stream; an
// error after g.Tell was called means the stream could not open after
// all. The bridge's reply is read by the stream's first Read (or
// WriteTo), which fails with a *RefusedError when the bridge refuses after
// all (its policy changed, or the destination could not be dialled). A
// name, a UDP association, or a bridge that does not advertise (an older
// one) waits for the reply as Open does, and g is not used.
func (k *Keeper) Start(ctx context.Context, h Header, g *Grant) (*Stream, error) {
	return k.open(ctx, h, g)
}

// Grant is how Start tells an application of an optimistic grant.
type Grant struct {
	Tell func() error // tells the application that its stream is open
	// First returns the application's first bytes, if it sends some at
	// once (nil: none), to go with the header.
	First func() ([]byte, error)
}

func (k *Keeper) open(ctx context.Context, h Header, g *Grant) (*Stream, error) {
	k.init()
	hdr, err := AppendHeader(nil, h)
	if err != nil {
		return nil, err
	}
	// SessionWait bounds the whole wait, over sessions that break before
	// the bridge replies (nothing has reached a destination then).
	wait := time.NewTimer(k.SessionWait)
	defer wait.Stop()
	for {
		s, err := k.session(ctx, wait.C)
		if err != nil {
			return nil, err
		}
		if g != nil {
			ok, err := s.judge(ctx, wait.C, h)
			if err != nil {
				return nil, err
			}
			if ok {
				if err := g.Tell(); err != nil {
					return nil, err
				}
				return s.openGranted(hdr, g)
			}
		}
		st, err := s.mux.OpenStream()
		if err != nil {
			s.mux.Close() // it broke meanwhile: try again, on a new session
			continue
		}
		rep, err := k.handshake(ctx, st, hdr)
		if err != nil {
			st.Close()
			if ctx.Err() == nil && !s.live() {
				continue // the session broke under it
			}
			return nil, err
		}
		s.answered.Store(true)
		if rep != shim.RepSucceeded {
			st.Close()
			return nil, &RefusedError{Rep: rep}
		}
		return &Stream{Stream: st, sess: s}, nil
	}
}

// handshake sends a stream's header and reads the server's reply.
func (k *Keeper) handshake(ctx context.Context, st *smux.Stream, hdr []byte) (byte, error) {
	st.SetDeadline(time.Now().Add(k.ReplyTimeout))
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := st.Write(hdr); err != nil {
		return 0, fmt.Errorf("free: send the stream header: %w", err)
	}
	rep, err := readReply(st)
	if err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("free: %w", context.Cause(ctx))
		}
		return 0, err
	}
	if !stop() {
		return 0, fmt.Errorf("free: %w", context.Cause(ctx))
	}
	st.SetDeadline(time.Time{})
	return rep, nil
}

// session returns the live session, waiting for one until wait fires.
func (k *Keeper) session(ctx context.Context, wait <-chan time.Time) (*clientSession, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.waiters++
	defer func() { k.waiters-- }()
	for {
		if k.closed {
			return nil, ErrClosed
		}
		if k.sess != nil && k.sess.live() {
			return k.sess, nil
		}
		k.sess = nil // broken: its watcher is closing it
		if k.dialing == nil {
			k.dialing = make(chan struct{})
			k.wg.Add(1)
			go k.dialLoop(k.dialing)
		}
		dialing := k.dialing
		k.mu.Unlock()
		var err error
		select {
		case <-dialing:
		case <-ctx.Done():
			err = fmt.Errorf("free: waiting for a session: %w", context.Cause(ctx))
		case <-wait:
			err = errors.New("free: no session to the bridge")
		case <-k.ctx.Done():
		}
		k.mu.Lock()
		if err != nil {
			if k.lastErr != nil {
				err = fmt.Errorf("%w within %v: %w", err, k.SessionWait, k.lastErr)
			}
			return nil, err
		}
	}
}

// dialLoop dials until a session is up, the keeper closes, or no Open
// waits any more, then closes done.
func (k *Keeper) dialLoop(done chan struct{}) {
	defer k.wg.Done()
	k.mu.Lock()
	defer func() {
		k.dialing = nil
		close(done)
		k.mu.Unlock()
	}()
	for !k.closed && k.waiters > 0 {
		if delay := time.Until(k.nextTry); delay > 0 {
			k.mu.Unlock()
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-k.ctx.Done():
				t.Stop()
			}
			k.mu.Lock()
			continue
		}
		k.mu.Unlock()
		start := time.Now()
		conn, err := k.Dial(k.ctx)
		k.mu.Lock()
		if err == nil && k.closed {
			conn.Close()
			return
		}
		if err != nil {
			if k.closed {
				return
			}
			k.failures++
			k.lastErr = err
			k.nextTry = time.Now().Add(k.backoff())
			k.log.Warn("cannot open a session to the bridge", "err", err, "failures", k.failures,
				"retry_in", time.Until(k.nextTry).Round(time.Millisecond))
			continue
		}
		s, err := k.newSession(conn)
		if err != nil {
			k.lastErr = err
			return
		}
		k.sess, k.failures, k.nextTry, k.lastErr = s, 0, time.Time{}, nil
		k.log.Info("free session opened", "setup", time.Since(start).Round(time.Millisecond))
		return
	}
}

// backoff is the wait after k.failures failed dials.
func (k *Keeper) backoff() time.Duration {
	d := k.MinBackoff << min(k.failures-1, 20)
	if d <= 0 || d > k.MaxBackoff {
		d = k.MaxBackoff
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// newSession starts a session over conn and its watcher; k.mu is held.
func (k *Keeper) newSession(conn net.Conn) (*clientSession, error) {
	wc := watch(conn)
	mux, err := smux.Client(wc, muxConfig(k.StreamWindow))
	if err != nil { // only a bad configuration fails
		conn.Close()
		return nil, err
	}
	s := &clientSession{mux: mux, conn: wc, window: newSendWindow(wc), done: make(chan struct{}), advertised: make(chan struct{})}
	k.wg.Go(func() { k.watch(s) })
	k.wg.Go(func() { k.fetchAdvert(s) })
	if k.SessionWindow >= 0 {
		// Until the bridge answers, its window is taken to be this end's:
		// the streams that open with the session do not fill the path
		// in the round trip before it does (an older bridge's refusal
		// lifts the limit).
		s.window.start(sessionWindowFor(k.SessionWindow, k.StreamWindow))
		k.wg.Go(func() { k.control(s) })
	}
	return s, nil
}

// streams is how many streams are open, the control stream aside.
func (s *clientSession) streams() int {
	n := s.mux.NumStreams()
	if s.control.Load() {
		n--
	}
	return n
}

// live reports whether s can take new streams.
func (s *clientSession) live() bool {
	select {
	case <-s.conn.broken:
		return false
	case <-s.done:
		return false
	default:
		return !s.mux.IsClosed()
	}
}

// watch waits for s to break or close, then closes it and forgets it, so
// that the next Open dials again.
func (k *Keeper) watch(s *clientSession) {
	why := "closed"
	select {
	case <-s.conn.broken:
		why = s.conn.err.Error()
	case <-s.mux.CloseChan():
		why = "keepalive timeout or a protocol error"
	case <-k.ctx.Done():
	}
	streams := s.streams()
	s.mux.Close()
	close(s.done)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.sess == s {
		k.sess = nil
	}
	switch {
	case k.closed:
	case !s.answered.Load():
		// The chain came up but the bridge never answered: as good as a
		// failed dial (a relay in front of a bridge that is down, or a
		// bridge not run with --free), and backed off as one.
		k.failures++
		k.lastErr = fmt.Errorf("the session ended before the bridge answered a stream (is it run with --free?): %s", why)
		k.nextTry = time.Now().Add(k.backoff())
		k.log.Warn("cannot open a session to the bridge", "err", k.lastErr, "failures", k.failures,
			"retry_in", time.Until(k.nextTry).Round(time.Millisecond))
	default:
		k.log.Warn("free session broke: its streams fail; the next stream opens a new one", "why", why, "streams_failed", streams)
	}
}

// Close ends the session and every stream, and waits for the keeper's
// goroutines.
func (k *Keeper) Close() error {
	k.init()
	k.mu.Lock()
	k.closed = true
	k.mu.Unlock()
	k.cancel()
	k.wg.Wait()
	return nil
}
