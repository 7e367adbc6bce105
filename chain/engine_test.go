package chain

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// digest is what a failed test prints of the logs: the last n lines above
// DEBUG, so that the test's own errors, printed before, stay in view of a CI
// log that keeps only its tail (a run of 20,000 connections logs thousands
// of debug lines).
func (l *logBuf) digest(n int) string {
	all := strings.Split(strings.TrimSpace(l.String()), "\n")
	var kept []string
	for _, line := range all {
		if !strings.Contains(line, "level=DEBUG") {
			kept = append(kept, line)
		}
	}
	above := len(kept)
	if above > n {
		kept = kept[above-n:]
	}
	return fmt.Sprintf("%d lines, %d of them above DEBUG; the last %d of those:\n%s",
		len(all), above, len(kept), strings.Join(kept, "\n"))
}

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// echoTor is a stand-in for tor's Extended ORPort that echoes every stream
// and records what it was told.
type echoTor struct {
	addr, cookiePath string
	mu               sync.Mutex
	metas            []extorport.Meta
}

func startEchoTor(t *testing.T) *echoTor {
	t.Helper()
	e := &echoTor{}
	e.addr, e.cookiePath = serveTor(t, func(c net.Conn, cookie []byte) {
		meta, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie})
		if err != nil {
			return
		}
		e.mu.Lock()
		e.metas = append(e.metas, meta)
		e.mu.Unlock()
		extorport.Okay(c)
		io.Copy(c, c)
	})
	return e
}

// serveTor runs a stand-in for tor's Extended ORPort on loopback with a
// fresh cookie file: serve handles each connection, in its own goroutine,
// and the connection is closed after it. Listener and handlers end before
// the test does.
func serveTor(t *testing.T, serve func(c net.Conn, cookie []byte)) (addr, cookiePath string) {
	t.Helper()
	cookiePath = t.TempDir() + "/cookie"
	cookie, err := extorport.WriteCookieFile(cookiePath)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c, cookie)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), cookiePath
}

func testConfig(t *testing.T) *Config {
	t.Helper()
	var c Config
	for _, f := range []string{"test=" + testpt} {
		if err := c.AddPluginFlag(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"t2=test|test", "t3=test|test|test"} {
		if err := c.AddChainFlag(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return &c
}

// pair runs a Server and a Client in this process, both with the test PT.
func pair(t *testing.T, names ...string) (*Client, *Server, map[string]Published, *echoTor, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	tor := startEchoTor(t)
	cfg := testConfig(t)
	cfg.ServerOptions = map[string]metadata.Args{
		"test": {"key": {"7"}},
		"t2":   {"0.key": {"21"}, "1.key": {"22"}},
		"t3":   {"0.key": {"31"}, "1.key": {"32"}, "2.key": {"33"}},
	}
	srv := NewServer(ServerOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(logs),
		TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath})
	var binds []Bind
	for _, n := range names {
		binds = append(binds, Bind{Alias: n, Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}})
	}
	pubs, err := srv.Start(context.Background(), binds)
	if err != nil {
		t.Fatal(err)
	}
	published := map[string]Published{}
	for _, p := range pubs {
		if p.Err != nil {
			t.Fatalf("server %s: %v", p.Alias, p.Err)
		}
		published[p.Alias] = p
	}
	cli := NewClient(ClientOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(logs)})
	for name, err := range cli.Start(context.Background(), names) {
		if err != nil {
			t.Fatalf("client %s: %v", name, err)
		}
	}
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		if t.Failed() {
			t.Logf("logs: %s", logs.digest(15))
		}
	})
	return cli, srv, published, tor, logs
}

func echoOnce(t *testing.T, conn net.Conn, size int) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	go conn.Write(data)
	got := make([]byte, size)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("echo of %d bytes: %v", size, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo of %d bytes differs", size)
	}
}

// The client and server engines in one process: chains of 1-3 hops of the
// test PT, the real client address and the alias reach tor, and closing
// both leaves no goroutine and no child.
func TestEnginesEndToEnd(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after pair's cleanup
	cli, srv, pubs, tor, _ := pair(t, "test", "t2", "t3")
	if n := len(cli.Processes()); n != 1 {
		t.Errorf("client runs %d children, want 1", n)
	}
	// Server children: one per distinct option set of the test PT's one
	// method: keys 7, 21, 22, 31, 32, 33, but 21 and 31 (position 0 of t2
	// and t3) may share nothing else, so six children of one program.
	if n := len(srv.Processes()); n != 6 {
		t.Errorf("server runs %d children, want 6 (one per distinct key)", n)
	}
	// Each chain's public port is dialled once, by the client's outermost
	// PT: that socket is the client tor must be told of.
	var clients []netip.AddrPort
	for _, name := range []string{"test", "t2", "t3"} {
		p := pubs[name]
		conn, err := cli.Dial(context.Background(), name, p.Addr.String(), p.Args)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		echoOnce(t, conn, 100000)
		dialled := procstat.EstablishedTo(p.Addr.AddrPort())
		if len(dialled) != 1 {
			t.Fatalf("%s: %d connections to the public port %v, want the client's one: %v", name, len(dialled), p.Addr, dialled)
		}
		clients = append(clients, dialled[0])
		conn.Close()
	}
	tor.mu.Lock()
	metas := append([]extorport.Meta(nil), tor.metas...)
	tor.mu.Unlock()
	if len(metas) != 3 {
		t.Fatalf("tor saw %d streams, want 3: %v", len(metas), metas)
	}
	for i, name := range []string{"test", "t2", "t3"} {
		if metas[i].Transport != name {
			t.Errorf("stream %d: TRANSPORT %q, want %q", i, metas[i].Transport, name)
		}
		if got, err := metas[i].AddrPort(); err != nil || got != clients[i] {
			t.Errorf("stream %d: USERADDR %q, want the client's socket %v", i, metas[i].UserAddr, clients[i])
		}
	}
	pids := append(cli.Processes(), srv.Processes()...)
	cli.Close()
	srv.Close()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("child %d still exists after Close: %v", pid, err)
		}
	}
}

// A failing hop is named, its SOCKS reply is carried, and nothing leaks.
func TestClientDialErrors(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after pair's cleanup
	cli, _, pubs, _, _ := pair(t, "t3")
	// Port 1, where nothing listens: a port freed by closing a listener
	// could be handed to one of our own shims meanwhile.
	const deadAddr = "127.0.0.1:1"
	_, err := cli.Dial(context.Background(), "t3", deadAddr, pubs["t3"].Args)
	var he *HopError
	if !errors.As(err, &he) || he.Hop != 2 || he.ReplyCode() != shim.RepConnectionRefused {
		t.Fatalf("dial to a closed port: %v, want hop 2 with reply 0x05", err)
	}
	for _, tc := range []struct {
		name string
		args metadata.Args
		want string
	}{
		{"t3", metadata.Args{"3.key": {"1"}}, "names hop 3"},
		{"t3", metadata.Args{"key": {strings.Repeat("x", 600)}}, "510"},
		{"nosuch", nil, "no such chain"},
	} {
		_, err := cli.Dial(context.Background(), tc.name, pubs["t3"].Addr.String(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Dial(%s, %v) = %v, want %q", tc.name, tc.args, err, tc.want)
		}
	}
	// A wrong key for hop 1: its server refuses, so the chain breaks there.
	bad := metadata.Args{"0.key": {"31"}, "1.key": {"99"}, "2.key": {"33"}}
	conn, err := cli.Dial(context.Background(), "t3", pubs["t3"].Addr.String(), bad)
	if err == nil {
		// The test PT grants before its server checks the key; the break
		// shows as a closed stream.
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte("x"))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Error("a stream with a wrong key for hop 1 carried data")
		}
		conn.Close()
	}
	// The chain still works.
	conn, err = cli.Dial(context.Background(), "t3", pubs["t3"].Addr.String(), pubs["t3"].Args)
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, conn, 1000)
	conn.Close()
}

// A child that dies is started again on the next connection.
func TestClientRestartsDeadChild(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after pair's cleanup
	cli, _, pubs, _, _ := pair(t, "t2")
	pids := cli.Processes()
	if len(pids) != 1 {
		t.Fatalf("children: %v", pids)
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	deadline := time.Now().Add(eventCeiling) // a ceiling: connections fail until the restart
	var conn *Conn
	var err error
	for time.Now().Before(deadline) {
		conn, err = cli.Dial(context.Background(), "t2", pubs["t2"].Addr.String(), pubs["t2"].Args)
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no connection after the child was killed: %v", err)
	}
	echoOnce(t, conn, 1000)
	conn.Close()
	if now := cli.Processes(); len(now) != 1 || now[0] == pids[0] {
		t.Errorf("children after restart: %v (was %v)", now, pids)
	}
}

// The server refuses Extended ORPort connections without the cookie, with a
// wrong hash, and with a USERADDR it did not dial; each is logged.
func TestServerExtORPortSecurity(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after pair's cleanup
	_, srv, _, _, logs := pair(t, "t2")
	srv.mu.Lock()
	child := srv.children[0]
	ext := child.extLn.Addr().String()
	srv.mu.Unlock()
	cookiePath := srv.cookieFile(child)

	// 1. A wrong cookie: the hash check fails.
	wrong := t.TempDir() + "/wrong"
	if _, err := extorport.WriteCookieFile(wrong); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := extorport.Dial(ctx, ext, extorport.ClientConfig{CookiePath: wrong}, extorport.Meta{UserAddr: "127.0.0.1:1", Transport: "test"}); err == nil {
		c.Close()
		t.Error("a wrong cookie was accepted")
	}
	// 2. No cookie at all: a client that sends garbage instead of the auth.
	raw, err := net.Dial("tcp", ext)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write(bytes.Repeat([]byte{1}, 100))
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, raw)
	raw.Close()
	// 3. The right cookie, but a USERADDR the server never dialled.
	if c, err := extorport.Dial(ctx, ext, extorport.ClientConfig{CookiePath: cookiePath}, extorport.Meta{UserAddr: "127.0.0.1:9", Transport: "test"}); err == nil {
		c.Close()
		t.Error("an undialled USERADDR was accepted")
	} else if !errors.Is(err, extorport.ErrDenied) {
		t.Errorf("undialled USERADDR: %v, want DENY", err)
	}
	deadline := time.Now().Add(eventCeiling)
	for time.Now().Before(deadline) && strings.Count(logs.String(), "refused an Extended ORPort connection") < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "refused an Extended ORPort connection"); n < 3 {
		t.Errorf("%d refusals logged, want 3:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "dialled no such connection") {
		t.Error("the undialled USERADDR refusal does not say why")
	}
}

func TestStampBook(t *testing.T) {
	b := newStampBook()
	a := netip.MustParseAddrPort("127.0.0.1:5000")
	st := stamp{child: 1, method: "obfs4", addr: a}
	other := stamp{child: 2, method: "obfs4", addr: a} // same port, other hop
	if err := b.Put(st, hopLink{pos: 1}); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(other, hopLink{pos: 0}); err != nil {
		t.Fatal(err)
	}
	if err := b.Put(st, hopLink{pos: 1}); err == nil {
		t.Error("a live stamp was recorded twice")
	}
	if l, ok := b.Take(other, 0); !ok || l.pos != 0 {
		t.Errorf("Take(other) = %v %v", l, ok)
	}
	if l, ok := b.Take(st, 0); !ok || l.pos != 1 {
		t.Errorf("Take(st) = %v %v", l, ok)
	}
	if _, ok := b.Take(st, time.Millisecond); ok {
		t.Error("a stamp was taken twice")
	}
	// A lookup that comes before its record waits for it.
	late := stamp{child: 3, method: "x", addr: a}
	done := make(chan bool)
	go func() {
		_, ok := b.Take(late, 5*time.Second)
		done <- ok
	}()
	waitFor(t, "Take to wait for the stamp", eventCeiling, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, waiting := b.waiters[late]
		return waiting
	})
	b.Put(late, hopLink{pos: 2})
	if !<-done {
		t.Error("a waiting Take missed its stamp")
	}
	// Without TRANSPORT: exactly one candidate, or none.
	b.Put(stamp{child: 4, method: "a", addr: a}, hopLink{pos: 0})
	if _, ok := b.TakeAnyMethod(4, a); !ok {
		t.Error("TakeAnyMethod missed the only candidate")
	}
	b.Put(stamp{child: 5, method: "a", addr: a}, hopLink{})
	b.Put(stamp{child: 5, method: "b", addr: a}, hopLink{})
	if _, ok := b.TakeAnyMethod(5, a); ok {
		t.Error("TakeAnyMethod guessed between two candidates")
	}
	b.Drop(stamp{child: 5, method: "a", addr: a})
	b.Drop(stamp{child: 5, method: "b", addr: a})
	if b.Len() != 0 {
		t.Errorf("%d stamps left", b.Len())
	}
}

// The Dialer makes a chain an x/net/proxy dialer for Go programs.
func TestDialer(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after pair's cleanup
	cli, _, pubs, tor, _ := pair(t, "t2")
	d := Dialer{Client: cli, Chain: "t2", Args: pubs["t2"].Args}
	conn, err := d.Dial("tcp", pubs["t2"].Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	echoOnce(t, conn, 5000)
	conn.Close()
	if _, err := d.Dial("udp", pubs["t2"].Addr.String()); err == nil {
		t.Error("udp was accepted")
	}
	tor.mu.Lock()
	defer tor.mu.Unlock()
	if len(tor.metas) != 1 || tor.metas[0].Transport != "t2" {
		t.Errorf("tor saw %v", tor.metas)
	}
}
