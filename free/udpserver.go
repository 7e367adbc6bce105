package free

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/shim"
)

// Bounds of one UDP association on the server.
const (
	maxPeers = 4096 // destinations one association may send to
	maxNames = 256  // resolved names it keeps
)

// udpRelay is one UDP association on the server: the stream's frames go
// out of one UDP socket, and datagrams that come back to it from a peer
// it sent to (an address- and port-restricted filter, RFC 4787 section
// 5) go back as frames with their source.
type udpRelay struct {
	s   *Server
	st  gatedStream
	pc  *net.UDPConn
	log *slog.Logger

	last atomic.Int64 // unix nanoseconds of the last datagram either way

	mu     sync.Mutex
	peers  map[netip.AddrPort]bool
	names  map[string][]netip.Addr
	warned map[string]bool // destinations refused, logged once each
}

// udp serves a UDP association on st.
func (s *Server) udp(ctx context.Context, st gatedStream, log *slog.Logger) {
	// One socket for both families: IPv4 destinations go out as
	// IPv4-mapped addresses.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		log.Warn("cannot open a UDP socket", "err", err)
		writeReply(st.Stream, shim.RepGeneralFailure)
		return
	}
	if err := writeReply(st.Stream, shim.RepSucceeded); err != nil {
		pc.Close()
		return
	}
	r := &udpRelay{s: s, st: st, pc: pc, log: log, peers: map[netip.AddrPort]bool{},
		names: map[string][]netip.Addr{}, warned: map[string]bool{}}
	r.run(ctx)
}

// run relays until the stream ends, the association is idle for UDPIdle,
// or ctx ends; then it closes the socket and the stream.
func (r *udpRelay) run(ctx context.Context) {
	var once sync.Once
	end := func() {
		once.Do(func() {
			r.pc.Close()
			r.st.Close()
		})
	}
	stop := context.AfterFunc(ctx, end)
	defer stop()
	r.touch()
	idle := r.idleTimer(end)
	defer idle.Stop()
	var wg sync.WaitGroup
	wg.Go(func() {
		defer end()
		r.down()
	})
	r.up(ctx)
	end()
	wg.Wait()
}

func (r *udpRelay) touch() { r.last.Store(time.Now().UnixNano()) }

// idleTimer calls end once no datagram has passed for UDPIdle.
func (r *udpRelay) idleTimer(end func()) *time.Timer {
	var t *time.Timer
	t = time.AfterFunc(r.s.UDPIdle, func() {
		left := r.s.UDPIdle - time.Since(time.Unix(0, r.last.Load()))
		if left > 0 {
			t.Reset(left)
			return
		}
		r.log.Debug("UDP association idle: ending it", "idle", r.s.UDPIdle)
		end()
	})
	return t
}

// up sends the stream's frames to their destinations.
func (r *udpRelay) up(ctx context.Context) {
	buf := make([]byte, maxFrame)
	for {
		dest, data, err := ReadFrame(r.st, buf)
		if errors.Is(err, ErrFrame) {
			r.refuse(dest, "malformed frame dropped", err)
			continue
		}
		if err != nil {
			return
		}
		r.touch()
		to, ok := r.resolve(ctx, dest)
		if !ok {
			continue
		}
		if _, err := r.pc.WriteToUDPAddrPort(data, to); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			r.log.Debug("UDP send failed", "dest", r.s.show(dest), "err", err)
		}
	}
}

// resolve turns a frame's destination into an address the policy allows,
// and lets its replies in. A refused datagram is dropped, and logged once
// per destination.
func (r *udpRelay) resolve(ctx context.Context, dest shim.Addr) (netip.AddrPort, bool) {
	var ips []netip.Addr
	if dest.Name != "" {
		r.mu.Lock()
		ips = r.names[dest.Name]
		r.mu.Unlock()
	}
	if ips == nil {
		dctx, cancel := context.WithTimeout(ctx, r.s.DialTimeout)
		var ref *refusal
		ips, ref = r.s.allowed(dctx, dest)
		cancel()
		if ref != nil {
			r.refuse(dest, "UDP destination refused", ref)
			return netip.AddrPort{}, false
		}
		if dest.Name != "" {
			r.mu.Lock()
			if len(r.names) >= maxNames {
				clear(r.names)
			}
			r.names[dest.Name] = ips
			r.mu.Unlock()
		}
	}
	to := netip.AddrPortFrom(ips[0], dest.Port)
	r.mu.Lock()
	full := !r.peers[to] && len(r.peers) >= maxPeers
	if !full {
		r.peers[to] = true
	}
	r.mu.Unlock()
	if full {
		r.refuse(dest, "UDP association has too many destinations: datagram dropped", nil)
		return netip.AddrPort{}, false
	}
	return to, true
}

// refuse logs a dropped datagram once per destination (warnings for the
// policy, as for a TCP stream).
func (r *udpRelay) refuse(dest shim.Addr, msg string, err error) {
	key := dest.String()
	r.mu.Lock()
	first := !r.warned[key] && len(r.warned) < maxNames
	if first {
		r.warned[key] = true
	}
	r.mu.Unlock()
	level := slog.LevelDebug
	if first {
		level = slog.LevelWarn
	}
	var ref *refusal
	if errors.As(err, &ref) && ref.rep == shim.RepNotAllowed {
		msg = "destination refused by policy"
	}
	r.log.Log(context.Background(), level, msg, "dest", r.s.show(dest), "proto", "udp", "why", err)
}

// down sends the datagrams of the peers back as frames.
func (r *udpRelay) down() {
	buf := make([]byte, maxFrame)
	frame := make([]byte, 0, 2+1+16+2+maxFrame)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		r.mu.Lock()
		known := r.peers[from]
		r.mu.Unlock()
		if !known {
			continue
		}
		r.touch()
		frame, err = AppendFrame(frame[:0], shim.AddrFrom(from), buf[:n])
		if err != nil {
			continue
		}
		if _, err := r.st.Write(frame); err != nil {
			return
		}
	}
}
