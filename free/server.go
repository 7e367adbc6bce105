package free

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xtaci/smux"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/shim"
)

// Defaults for Server's zero fields.
const (
	DefaultDialTimeout   = 10 * time.Second
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultUDPIdle is RFC 4787's floor for a NAT's UDP mapping timeout
	// (REQ-5: "MUST NOT expire in less than two minutes").
	DefaultUDPIdle    = 2 * time.Minute
	DefaultMaxStreams = 1024
)

// Server is the free end on the bridge: each connection ServeConn is given
// (a chained connection, finished by the bridge's hops) carries one smux
// session, and each stream of it one destination, dialled under Policy.
// Its fields are read when it first serves; do not change them after.
type Server struct {
	Policy *Policy       // nil: the built-in denials only
	Logger *slog.Logger  // nil: slog.Default()
	Resolv *net.Resolver // resolves destination names; nil: net.DefaultResolver
	// DialTimeout bounds resolving and dialling one destination.
	DialTimeout time.Duration
	// HeaderTimeout bounds reading a stream's header.
	HeaderTimeout time.Duration
	// UDPIdle ends a UDP association that carried no datagram either way
	// for this long.
	UDPIdle time.Duration
	// MaxStreams caps the streams open at once in one session; further
	// ones are refused (REP 0x01).
	MaxStreams int
	// ShowNames logs destination names; by default they are scrubbed, as
	// the runner scrubs IP addresses.
	ShowNames bool
	// StreamWindow is each stream's receive window in bytes, what a
	// client may send ahead on one stream (0: DefaultStreamWindow;
	// CheckStreamWindow gives the range).
	StreamWindow int
	// SessionWindow is what a client may keep in flight over a whole
	// session, in bytes, announced to clients that ask for a session
	// window (0: half StreamWindow; negative: no limit;
	// CheckSessionWindow gives the range).
	SessionWindow int

	once     sync.Once
	sessions atomic.Int64 // open now
	streams  atomic.Int64 // open now, every session

	advertOnce sync.Once
	advert     []byte // the answer to Advertise: 01 00 and the advertisement
	advertErr  error
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		if s.Resolv == nil {
			s.Resolv = net.DefaultResolver
		}
		if s.DialTimeout <= 0 {
			s.DialTimeout = DefaultDialTimeout
		}
		if s.HeaderTimeout <= 0 {
			s.HeaderTimeout = DefaultHeaderTimeout
		}
		if s.UDPIdle <= 0 {
			s.UDPIdle = DefaultUDPIdle
		}
		if s.MaxStreams <= 0 {
			s.MaxStreams = DefaultMaxStreams
		}
	})
}

// Open returns the sessions and streams open now.
func (s *Server) Open() (sessions, streams int) {
	return int(s.sessions.Load()), int(s.streams.Load())
}

// ServeConn serves the session on conn until it ends or ctx does, then
// closes conn and waits for its streams. label names conn in the log (a
// chain's alias).
func (s *Server) ServeConn(ctx context.Context, conn net.Conn, label string) {
	s.init()
	log := s.Logger.With("chain", label)
	wc := watch(conn)
	mux, err := smux.Server(wc, muxConfig(s.StreamWindow))
	if err != nil { // only a bad configuration fails
		log.Error("free session", "err", err)
		conn.Close()
		return
	}
	s.sessions.Add(1)
	defer s.sessions.Add(-1)
	// The session's end ends its streams' destinations too: smux ends a
	// stream with io.EOF when the connection ends, which alone would only
	// half-close the destination.
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { mux.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	defer mux.Close()
	go func() {
		select {
		case <-wc.broken:
			mux.Close()
		case <-mux.CloseChan():
		}
	}()
	log.Info("free session opened")
	sess := &serverSession{conn: wc, window: newSendWindow(wc)}
	defer sess.window.end()
	var open atomic.Int64
	total := 0
	for {
		st, err := mux.AcceptStream()
		if err != nil {
			log.Info("free session ended", "streams", total, "err", err)
			return
		}
		total++
		if open.Add(1) > int64(s.MaxStreams) {
			open.Add(-1)
			log.Warn("too many streams open in one session: refusing one", "max_streams", s.MaxStreams)
			writeReply(st, shim.RepGeneralFailure)
			st.Close()
			continue
		}
		s.streams.Add(1)
		wg.Go(func() {
			var once sync.Once
			uncount := func() { once.Do(func() { s.streams.Add(-1); open.Add(-1) }) }
			defer uncount()
			s.stream(ctx, st, sess, uncount, log)
		})
	}
}

// serverSession is what a session's streams share.
type serverSession struct {
	conn       *watchedConn
	window     *sendWindow // what this end may send; no limit until a client asks
	controlled atomic.Bool // a control stream (Window) has been opened
}

// stream serves one stream: its header, then its destination.
// uncount takes the stream out of the counts of streams open (Open,
// MaxStreams), as a control stream is no destination's.
func (s *Server) stream(ctx context.Context, st *smux.Stream, sess *serverSession, uncount func(), log *slog.Logger) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(s.HeaderTimeout))
	h, err := ReadHeader(st)
	if err != nil {
		// Only this stream ends: the session and the other streams go on.
		log.Warn("malformed stream header: closing the stream", "err", err)
		switch {
		case errors.Is(err, ErrCommand):
			writeReply(st, shim.RepCommandNotSupported)
		case errors.Is(err, shim.ErrAddressNotSupported):
			writeReply(st, shim.RepAddressNotSupported)
		}
		return
	}
	st.SetReadDeadline(time.Time{})
	gated := gatedStream{st, sess.window}
	switch h.Command {
	case Connect:
		s.connect(ctx, gated, h.Dest, log)
	case UDP:
		s.udp(ctx, gated, log)
	case Advertise:
		s.advertise(st, log)
	case Window:
		uncount()
		s.control(st, sess, h.Window, log)
	}
}

// control serves a session's control stream: it answers with this end's
// window, 01 00 WINDOW, then runs the session window both ways until the
// stream or the session ends. A second control stream is refused (REP
// 0x01) and changes nothing.
func (s *Server) control(st *smux.Stream, sess *serverSession, peer uint32, log *slog.Logger) {
	if sess.controlled.Swap(true) {
		log.Warn("a second session window control stream: refusing it")
		writeReply(st, shim.RepGeneralFailure)
		return
	}
	own := sessionWindowFor(s.SessionWindow, s.StreamWindow)
	reply := binary.BigEndian.AppendUint32([]byte{version, shim.RepSucceeded}, own)
	st.SetWriteDeadline(time.Now().Add(s.HeaderTimeout))
	if _, err := st.Write(reply); err != nil {
		return
	}
	st.SetWriteDeadline(time.Time{})
	log.Debug("session window", "client_window", peer, "bridge_window", own)
	runWindow(st, sess.conn, sess.window, own, peer, log)
}

// advertise answers a client's Advertise: 01 00 and the policy, so that
// the client can refuse what the policy denies and grant the rest
// without waiting for a reply (the bridge still judges every stream).
func (s *Server) advertise(st *smux.Stream, log *slog.Logger) {
	s.advertOnce.Do(func() {
		s.advert, s.advertErr = AppendAdvert([]byte{version, shim.RepSucceeded}, s.Policy)
		if s.advertErr != nil {
			log.Warn("the policy is not advertised: clients wait for each stream's reply", "err", s.advertErr)
		}
	})
	if s.advertErr != nil {
		writeReply(st, shim.RepCommandNotSupported)
		return
	}
	st.SetWriteDeadline(time.Now().Add(s.HeaderTimeout))
	st.Write(s.advert)
}

// show is how the log names a destination.
func (s *Server) show(a shim.Addr) string {
	if a.Name != "" && !s.ShowNames {
		return fmt.Sprintf("[name scrubbed]:%d", a.Port)
	}
	return a.String()
}

// refusal is why a destination is not dialled, with the reply it gets.
type refusal struct {
	rep byte
	err error
}

func (r *refusal) Error() string { return r.err.Error() }

// allowed resolves dest on the server (a name) and returns its addresses
// that the policy allows, in the resolver's order, or a refusal: REP 0x02
// when the policy denies every one, 0x04 when a name does not resolve. The
// addresses checked are the ones dialled, so a name cannot reach a denied
// address by resolving differently later.
func (s *Server) allowed(ctx context.Context, dest shim.Addr) ([]netip.Addr, *refusal) {
	ips := []netip.Addr{dest.IP}
	if dest.Name != "" {
		var err error
		if ips, err = s.Resolv.LookupNetIP(ctx, "ip", dest.Name); err != nil || len(ips) == 0 {
			return nil, &refusal{shim.RepHostUnreachable, fmt.Errorf("resolve: %w", err)}
		}
	}
	var ok []netip.Addr
	var denied Decision
	for _, ip := range ips {
		d := s.Policy.Check(ip, dest.Port)
		if d.Allowed {
			ok = append(ok, ip.Unmap())
		} else if denied.Rule == "" {
			denied = d
		}
	}
	if len(ok) == 0 {
		return nil, &refusal{shim.RepNotAllowed, fmt.Errorf("refused by %s", denied.Rule)}
	}
	return ok, nil
}

// connect dials dest and joins the stream to it.
func (s *Server) connect(ctx context.Context, st gatedStream, dest shim.Addr, log *slog.Logger) {
	dctx, cancel := context.WithTimeout(ctx, s.DialTimeout)
	out, ref := s.dial(dctx, dest)
	cancel()
	if ref != nil {
		if ref.rep == shim.RepNotAllowed {
			log.Warn("destination refused by policy", "dest", s.show(dest), "why", ref.err)
		} else {
			log.Info("cannot reach destination", "dest", s.show(dest), "socks_reply", ref.rep, "err", ref.err)
		}
		writeReply(st.Stream, ref.rep)
		return
	}
	// The reply goes out while the client's first bytes (sent with the
	// header, after an optimistic grant) already go on to the
	// destination; the destination's bytes follow the reply.
	replied := make(chan struct{})
	go func() {
		defer close(replied)
		if err := writeReply(st.Stream, shim.RepSucceeded); err != nil {
			st.Close()
		}
	}()
	if _, _, err := shim.Pipe(ctx, serverStream{st, replied}, out); err != nil {
		log.Debug("stream ended", "dest", s.show(dest), "err", err)
	}
}

// dial connects to the first of dest's allowed addresses that answers.
func (s *Server) dial(ctx context.Context, dest shim.Addr) (net.Conn, *refusal) {
	ips, ref := s.allowed(ctx, dest)
	if ref != nil {
		return nil, ref
	}
	var errs []error
	for _, ip := range ips {
		addr := netip.AddrPortFrom(ip, dest.Port).String()
		conn, err := loopback.Dialer(addr).DialContext(ctx, "tcp", addr)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	err := errors.Join(errs...)
	return nil, &refusal{shim.ReplyCodeFor(err), err}
}
