package free

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/ptcombiner/ptcombiner/internal/freetest"
	"github.com/ptcombiner/ptcombiner/shim"
)

// ceiling bounds waits for what should happen; it is no timing
// requirement.
const ceiling = 30 * time.Second

// logBuffer collects a logger's lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// rig is a free proxy and a free server joined by plain loopback TCP (the
// chain is package chain's, and the integration tests'): what the client's
// Keeper dials, the server serves.
type rig struct {
	t      *testing.T
	keeper *Keeper
	proxy  string // the SOCKS5 address
	server *Server
	log    *logBuffer

	dials    atomic.Int32
	mu       sync.Mutex
	down     bool       // dials fail
	mute     bool       // the bridge accepts and closes at once
	accepted []net.Conn // the server's side of every session
}

func newRig(t *testing.T, srv *Server, tune func(*Keeper, *Proxy)) *rig {
	t.Helper()
	r := &rig{t: t, server: srv, log: &logBuffer{}}
	log := slog.New(slog.NewTextHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv.Logger = log
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	bridge := listen(t)
	wg.Go(func() {
		for {
			c, err := bridge.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			r.accepted = append(r.accepted, c)
			mute := r.mute
			r.mu.Unlock()
			if mute {
				c.Close()
				continue
			}
			wg.Go(func() { srv.ServeConn(ctx, c, "rig") })
		}
	})
	r.keeper = &Keeper{Label: "rig", Logger: log, Dial: func(ctx context.Context) (net.Conn, error) {
		r.dials.Add(1)
		r.mu.Lock()
		down := r.down
		r.mu.Unlock()
		if down {
			return nil, errors.New("the bridge is down")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", bridge.Addr().String())
	}}
	p := &Proxy{Keeper: r.keeper, Logger: log}
	if tune != nil {
		tune(r.keeper, p)
	}
	front := listen(t)
	r.proxy = front.Addr().String()
	wg.Go(func() {
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); p.Handle(ctx, c) })
		}
	})
	t.Cleanup(func() {
		front.Close()
		bridge.Close()
		r.keeper.Close()
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("log:\n%s", r.log)
		}
	})
	return r
}

// echoAgain opens a new stream to echo, after a break, and echoes a line
// through it.
func (r *rig) echoAgain(echo string) {
	r.t.Helper()
	again, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
	if err != nil {
		r.t.Fatalf("a new stream after the break: %v", err)
	}
	defer again.Close()
	if err := freetest.Echo(again, ceiling, "again"); err != nil {
		r.t.Fatal(err)
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func loopbackPolicy(t *testing.T) *Policy {
	t.Helper()
	p, err := ParseRules([]string{"127.0.0.0/8"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// httpClient fetches through the rig's SOCKS5 proxy, as a Go program
// does (x/net/proxy).
func (r *rig) httpClient(auth *proxy.Auth) *http.Client {
	d, err := proxy.SOCKS5("tcp", r.proxy, auth, proxy.Direct)
	if err != nil {
		r.t.Fatal(err)
	}
	tr := &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}
	r.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: ceiling}
}

func fetch(c *http.Client, url string, size int) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return freetest.Check(body, size)
}

// Many HTTP fetches through the proxy, by IP and by name (resolved on the
// server), byte-exact, all in one session over one connection.
func TestSessionHTTP(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, nil)
	servers, served := freetest.HTTPServers(t, 3)
	c := r.httpClient(nil)
	errs := freetest.Load(200, 20, func(i int) error {
		url := "http://" + servers[i%3] + fmt.Sprintf("/%d", 1+i*517)
		if i%2 == 1 {
			url = strings.Replace(url, "127.0.0.1", "localhost", 1)
		}
		return fetch(c, url, 1+i*517)
	})
	if len(errs) > 0 {
		t.Fatalf("%d fetches failed; first: %v", len(errs), errs[0])
	}
	if n := served.Load(); n != 200 {
		t.Errorf("the servers served %d requests, want 200", n)
	}
	if n := r.dials.Load(); n != 1 {
		t.Errorf("%d sessions dialled, want 1", n)
	}
}

// A destination the policy denies gets REP 0x02 and a log line; the
// default policy refuses loopback and 10.0.0.0/8.
func TestSessionPolicy(t *testing.T) {
	echo := tcpEcho(t)
	for _, tc := range []struct {
		name   string
		policy *Policy
		dest   string
		rep    byte
		wait   bool // Proxy.Wait: the bridge's own reply
	}{
		{"default: loopback", nil, echo, shim.RepNotAllowed, false},
		{"default: 10/8", nil, "10.1.2.3:80", shim.RepNotAllowed, false},
		{"default: a name of loopback", nil, "localhost:" + port(echo), shim.RepNotAllowed, false},
		{"allowed loopback", loopbackPolicy(t), echo, shim.RepSucceeded, false},
		{"allowed loopback, still not 10/8", loopbackPolicy(t), "10.1.2.3:80", shim.RepNotAllowed, false},
		{"a name that does not resolve", loopbackPolicy(t), "no-such-name.invalid:80", shim.RepHostUnreachable, false},
		{"nothing listens", loopbackPolicy(t), "127.0.0.1:1", shim.RepConnectionRefused, true},
		{"the bridge's own refusal", nil, echo, shim.RepNotAllowed, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, &Server{Policy: tc.policy}, func(_ *Keeper, p *Proxy) { p.Wait = tc.wait })
			conn, err := shim.DialSOCKS5(context.Background(), r.proxy, tc.dest, nil, nil)
			var re *shim.ReplyError
			switch {
			case tc.rep == shim.RepSucceeded && err != nil:
				t.Fatalf("CONNECT %s: %v", tc.dest, err)
			case tc.rep == shim.RepSucceeded:
				conn.Close()
			case !errors.As(err, &re) || re.Code != tc.rep:
				t.Fatalf("CONNECT %s: %v, want reply 0x%02x", tc.dest, err, tc.rep)
			}
			if tc.rep == shim.RepNotAllowed && !strings.Contains(r.log.String(), "destination refused by policy") {
				t.Errorf("no log line for the refusal:\n%s", r.log)
			}
		})
	}
}

func port(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}

// tcpEcho serves loopback connections that echo what they get.
func tcpEcho(t *testing.T) string {
	t.Helper()
	ln := listen(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// A malformed stream header closes that stream only: the session, and a
// stream open beside it, go on.
func TestSessionMalformedHeader(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, nil)
	echo := tcpEcho(t)
	beside, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer beside.Close()
	if err := freetest.Echo(beside, ceiling, "before"); err != nil {
		t.Fatal(err)
	}
	r.keeper.mu.Lock()
	mux := r.keeper.sess.mux
	r.keeper.mu.Unlock()
	for _, tc := range []struct {
		name  string
		bytes []byte
		reply []byte // what the server answers before it closes the stream
	}{
		{"unknown version", []byte{9, 1, 1, 127, 0, 0, 1, 0, 80}, nil},
		{"unknown command", []byte{1, 2}, []byte{1, shim.RepCommandNotSupported}},
		{"unknown address type", []byte{1, 1, 7, 1}, []byte{1, shim.RepAddressNotSupported}},
		{"a name with a colon", append([]byte{1, 1, 3, 3}, "a:b\x00\x50"...), nil},
		{"cut short, then closed", []byte{1, 1, 1, 127}, nil},
	} {
		st, err := mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		st.Write(tc.bytes)
		if tc.name == "cut short, then closed" {
			st.CloseWrite()
		}
		st.SetReadDeadline(time.Now().Add(ceiling))
		got, err := io.ReadAll(st)
		st.Close()
		if err != nil || !bytes.Equal(got, tc.reply) {
			t.Errorf("%s: the server answered % x, %v; want % x and the stream's end", tc.name, got, err, tc.reply)
		}
	}
	if err := freetest.Echo(beside, ceiling, "after"); err != nil {
		t.Fatalf("the stream beside: %v", err)
	}
	if c, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil); err != nil {
		t.Fatalf("a new stream after: %v", err)
	} else {
		c.Close()
	}
	if n := r.dials.Load(); n != 1 {
		t.Errorf("%d sessions dialled, want 1", n)
	}
	if n := strings.Count(r.log.String(), "malformed stream header"); n != 5 {
		t.Errorf("%d log lines for malformed headers, want 5", n)
	}
}

// UDP ASSOCIATE: datagrams of 1 to 1400 bytes come back byte-exact and in
// order; a DNS query answers; a denied destination's datagrams are dropped,
// with a log line.
func TestSessionUDP(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), ceiling)
	defer cancel()
	u, err := freetest.Associate(ctx, t, r.proxy, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Exchange(freetest.UDPEcho(t), 2000, 16, ceiling); err != nil {
		t.Fatal(err)
	}
	dns := freetest.DNSServer(t)
	a, err := u.Lookup(shim.AddrFrom(dns), "example.com.", ceiling)
	if err != nil || a != freetest.DNSAnswer {
		t.Fatalf("DNS: %v, %v; want %v", a, err, freetest.DNSAnswer)
	}
	// By name: resolved on the server.
	a, err = u.Lookup(shim.Addr{Name: "localhost", Port: dns.Port()}, "example.org.", ceiling)
	if err != nil || a != freetest.DNSAnswer {
		t.Fatalf("DNS to localhost: %v, %v", a, err)
	}
	u.Send(shim.Addr{IP: netip.MustParseAddr("10.0.0.1"), Port: 53}, []byte("x"))
	waitFor(t, "a log line for the refused datagram", func() bool {
		return strings.Contains(r.log.String(), "destination refused by policy") && strings.Contains(r.log.String(), "proto=udp")
	})
	if n := r.dials.Load(); n != 1 {
		t.Errorf("%d sessions dialled, want 1", n)
	}
}

// An idle UDP association ends, and with it the application's control
// connection (RFC 1928: the association and the connection end together).
func TestSessionUDPIdle(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t), UDPIdle: 200 * time.Millisecond}, nil)
	ctrl, err := net.Dial("tcp", r.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	if _, err := shim.AssociateUDP(context.Background(), ctrl, nil, nil); err != nil {
		t.Fatal(err)
	}
	ctrl.SetReadDeadline(time.Now().Add(ceiling))
	if n, err := ctrl.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("control connection: %d bytes, %v; want its end", n, err)
	}
	waitFor(t, "the server's association to end", func() bool { _, streams := r.server.Open(); return streams == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ceiling)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", ceiling, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// When the session breaks, a stream in flight fails with a reset, not an
// end; the next stream opens a new session.
func TestSessionBreak(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, nil)
	echo := tcpEcho(t)
	conn, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := freetest.Echo(conn, ceiling, "hello"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.accepted[0].Close() // the bridge goes away
	r.mu.Unlock()
	conn.SetReadDeadline(time.Now().Add(ceiling))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the stream in flight: %v, want a reset", err)
	}
	r.echoAgain(echo)
	if n := r.dials.Load(); n != 2 {
		t.Errorf("%d sessions dialled, want 2", n)
	}
	if !strings.Contains(r.log.String(), "free session broke") {
		t.Errorf("no log line for the break")
	}
}

// While the bridge is down, a new stream waits up to SessionWait and is
// told why; dials back off; once the bridge is back, streams work again.
func TestSessionBridgeDown(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, func(k *Keeper, _ *Proxy) {
		k.SessionWait = 300 * time.Millisecond
		k.MinBackoff = 20 * time.Millisecond
		k.MaxBackoff = 80 * time.Millisecond
	})
	echo := tcpEcho(t)
	r.mu.Lock()
	r.down = true
	r.mu.Unlock()
	_, err := r.keeper.Open(context.Background(), Header{Command: Connect, Dest: shim.AddrFrom(netip.MustParseAddrPort(echo))})
	if err == nil || !strings.Contains(err.Error(), "no session to the bridge within 300ms: the bridge is down") {
		t.Fatalf("Open with the bridge down: %v", err)
	}
	if n := r.dials.Load(); n < 2 {
		t.Errorf("%d dials in the wait, want retries", n)
	}
	if _, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil); ReplyCode(err) == shim.RepSucceeded {
		t.Errorf("CONNECT with the bridge down: %v", err)
	}
	r.mu.Lock()
	r.down = false
	r.mu.Unlock()
	conn, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
	if err != nil {
		t.Fatalf("CONNECT with the bridge back: %v", err)
	}
	defer conn.Close()
	if err := freetest.Echo(conn, ceiling, "back"); err != nil {
		t.Fatal(err)
	}
}

// A bridge that takes the connection but never answers (a relay whose
// bridge is down) is backed off as a failed dial, and the stream is told.
func TestSessionBridgeMute(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, func(k *Keeper, _ *Proxy) {
		k.SessionWait = 300 * time.Millisecond
		k.MinBackoff = 20 * time.Millisecond
		k.MaxBackoff = 80 * time.Millisecond
	})
	r.mu.Lock()
	r.mute = true
	r.mu.Unlock()
	_, err := r.keeper.Open(context.Background(), Header{Command: UDP})
	if err == nil || !strings.Contains(err.Error(), "before the bridge answered") {
		t.Fatalf("Open against a mute bridge: %v", err)
	}
	if !strings.Contains(r.log.String(), "cannot open a session to the bridge") {
		t.Errorf("no log line for the mute bridge")
	}
	if n := r.dials.Load(); n < 2 {
		t.Errorf("%d dials, want retries", n)
	}
}

// With credentials, only the right username and password get through.
func TestSessionAuth(t *testing.T) {
	check := func(user, pass []byte) bool { return string(user) == "u" && string(pass) == "p" }
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, func(_ *Keeper, p *Proxy) { p.Check = check })
	echo := tcpEcho(t)
	if c, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, []byte("u"), []byte("p")); err != nil {
		t.Errorf("right credentials: %v", err)
	} else {
		c.Close()
	}
	for _, cred := range [][2]string{{"u", "x"}, {"x", "p"}, {"", ""}} {
		if c, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, []byte(cred[0]), []byte(cred[1])); err == nil {
			c.Close()
			t.Errorf("credentials %q got through", cred)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), ceiling)
	defer cancel()
	if _, err := freetest.Associate(ctx, t, r.proxy, []byte("u"), []byte("p")); err != nil {
		t.Errorf("UDP ASSOCIATE with the right credentials: %v", err)
	}
}

// 5,000 streams, opened and closed at 50 at once, leave no stream, no
// goroutine and no descriptor behind (goleak checks the goroutines when
// the package's tests end).
func TestSessionManyStreams(t *testing.T) {
	r := newRig(t, &Server{Policy: loopbackPolicy(t)}, nil)
	echo := tcpEcho(t)
	errs := freetest.Load(5000, 50, func(i int) error {
		c, err := shim.DialSOCKS5(context.Background(), r.proxy, echo, nil, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return freetest.Echo(c, ceiling, fmt.Sprintf("stream %d", i))
	})
	if len(errs) > 0 {
		t.Fatalf("%d of 5000 streams failed; first: %v", len(errs), errs[0])
	}
	waitFor(t, "every stream to end on the server", func() bool { _, streams := r.server.Open(); return streams == 0 })
	r.keeper.mu.Lock()
	sess := r.keeper.sess
	r.keeper.mu.Unlock()
	waitFor(t, "every stream to end on the client", func() bool { return sess.streams() == 0 })
	if n := r.dials.Load(); n != 1 {
		t.Errorf("%d sessions dialled, want 1", n)
	}
}

// Both ends' stream windows (Keeper.StreamWindow, Server.StreamWindow),
// the smallest and a large one: streams carry their bytes exactly, each
// end's session buffers 16 windows, and the default is 2 MiB.
func TestSessionStreamWindow(t *testing.T) {
	if c := muxConfig(0); c.MaxStreamBuffer != DefaultStreamWindow || c.MaxReceiveBuffer != 16*DefaultStreamWindow {
		t.Errorf("default config: stream %d, session %d", c.MaxStreamBuffer, c.MaxReceiveBuffer)
	}
	for _, n := range []int{MinStreamWindow - 1, MaxStreamWindow + 1} {
		if CheckStreamWindow(n) == nil {
			t.Errorf("CheckStreamWindow(%d) = nil", n)
		}
	}
	echo := tcpEcho(t)
	for _, window := range []int{MinStreamWindow, 8 << 20} {
		t.Run(fmt.Sprintf("%dKiB", window>>10), func(t *testing.T) {
			if err := CheckStreamWindow(window); err != nil {
				t.Fatal(err)
			}
			r := newRig(t, &Server{Policy: loopbackPolicy(t), StreamWindow: window}, func(k *Keeper, _ *Proxy) { k.StreamWindow = window })
			dialer, err := proxy.SOCKS5("tcp", r.proxy, nil, proxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			errs := freetest.Load(4, 4, func(i int) error {
				c, err := dialer.Dial("tcp", echo)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(ceiling))
				data := bytes.Repeat([]byte{byte(i), 1, 2, 3}, 1<<20) // 4 MiB
				go func() {
					c.Write(data)
					c.(interface{ CloseWrite() error }).CloseWrite()
				}()
				got, err := io.ReadAll(c)
				if err != nil {
					return err
				}
				if !bytes.Equal(got, data) {
					return fmt.Errorf("stream %d: %d bytes back of %d, or not the same", i, len(got), len(data))
				}
				return nil
			})
			if len(errs) > 0 {
				t.Fatalf("%d streams failed; first: %v", len(errs), errs[0])
			}
			if n := r.dials.Load(); n != 1 {
				t.Errorf("%d sessions dialled, want 1", n)
			}
		})
	}
}
