package chain

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// obfs4proxyOrSkip returns obfs4proxy's path; without it the test is
// skipped, except in CI, which installs it.
func obfs4proxyOrSkip(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("obfs4proxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("obfs4proxy is not installed, but CI must run this test: %v", err)
		}
		t.Skipf("obfs4proxy is not installed: %v", err)
	}
	return p
}

// serveEach runs handle on every connection ln accepts, each in its own
// goroutine, and closes it after; ln and the handlers end with the test.
func serveEach(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// listenLoopback listens on a free loopback port.
func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// plainEcho is a loopback echo server that honours half-close; it ends
// with the test.
func plainEcho(t *testing.T) string {
	t.Helper()
	ln := listenLoopback(t)
	serveEach(t, ln, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return ln.Addr().String()
}

// startPT runs a PT program as tor would, in role, offering methods; a
// server's ORPort is orport.
func startPT(t *testing.T, path string, role ptproc.Role, orport string, methods ...string) *ptproc.Process {
	t.Helper()
	p, err := ptproc.Start(context.Background(), ptproc.Spec{Name: filepath.Base(path), Path: path, Role: role,
		Methods: methods, StateDir: t.TempDir(), ORPort: orport})
	if err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// obfs4proxyBridge runs the server side of the chain methods (innermost
// first) as obfs4proxy servers wired by hand, hop 0's ORPort being echo.
// It returns the outermost server's address and the chain's client
// arguments, each hop's under its number.
func obfs4proxyBridge(t *testing.T, echo string, methods ...string) (string, metadata.Args) {
	t.Helper()
	obfs4proxy := obfs4proxyOrSkip(t)
	next := echo
	perHop := make([]metadata.Args, len(methods))
	for i, m := range methods {
		sm := startPT(t, obfs4proxy, ptproc.Server, next, m).ServerMethods()[m]
		next, perHop[i] = sm.Addr.String(), sm.Args
	}
	return next, metadata.JoinHops(perHop)
}

// clientOf runs a Client of the config text (obfs4proxy's path for
// OBFS4PROXY) with names started; it ends with the test.
func clientOf(t *testing.T, conf string, setupTimeout time.Duration, names ...string) *Client {
	t.Helper()
	conf = strings.ReplaceAll(conf, "OBFS4PROXY", obfs4proxyOrSkip(t))
	cfg, err := Parse(strings.NewReader(conf), "test config", ClientRole)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	return startClient(t, cfg, setupTimeout, names...)
}

// roundTrip sends size random bytes through conn to an echo and checks
// that the same bytes come back; it closes conn.
func roundTrip(conn net.Conn, size int) error {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(eventCeiling))
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(conn, int64(size)))
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err != nil || n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("%d of %d bytes came back (err %v), equal %v", n, size, err, bytes.Equal(h.Sum(nil), want[:]))
	}
	return nil
}

// mixedCase is a chain whose hops are served in different ways, against a
// bridge of obfs4proxy servers.
type mixedCase struct {
	name     string
	conf     string   // the client's config; the chain is "c"
	hops     []string // the chain's methods, for the bridge
	sizes    []int
	children int  // the client's own children
	stall    bool // obfs4proxy's obfs4 client carries obfs3: its known stall
}

var mixedCases = []mixedCase{
	{"in-process obfs4", "ClientTransportPlugin obfs4 builtin\nAlias c obfs4\n",
		[]string{"obfs4"}, []int{0, 1 << 20, 16 << 20}, 0, false},
	{"in-process obfs3|obfs4", "ClientTransportPlugin obfs3,obfs4 builtin\nAlias c obfs3|obfs4\n",
		[]string{"obfs3", "obfs4"}, []int{0, 1 << 20}, 0, false},
	{"in-process obfs3, obfs4proxy obfs4", "ClientTransportPlugin obfs3 builtin\nClientTransportPlugin obfs4 exec OBFS4PROXY\nAlias c obfs3|obfs4\n",
		[]string{"obfs3", "obfs4"}, []int{0, 1 << 20}, 1, true},
	{"obfs4proxy obfs3, in-process obfs4", "ClientTransportPlugin obfs3 exec OBFS4PROXY\nClientTransportPlugin obfs4 builtin\nAlias c obfs3|obfs4\n",
		[]string{"obfs3", "obfs4"}, []int{0, 1 << 20}, 1, false},
	{"in-process obfs2, obfs4proxy obfs3, in-process obfs4", "ClientTransportPlugin obfs2,obfs4 builtin\nClientTransportPlugin obfs3 exec OBFS4PROXY\nAlias c obfs2|obfs3|obfs4\n",
		[]string{"obfs2", "obfs3", "obfs4"}, []int{1 << 20}, 1, false},
}

// Chains of in-process hops, obfs4proxy children and both mixed carry data
// byte-exact to obfs4proxy servers; an all-in-process chain starts no
// child, and nothing is left running after Close.
func TestMixedChains(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last
	echo := plainEcho(t)
	for _, tc := range mixedCases {
		t.Run(tc.name, func(t *testing.T) {
			bridge, args := obfs4proxyBridge(t, echo, tc.hops...)
			cli := clientOf(t, tc.conf, 20*time.Second, "c")
			if n := len(cli.Processes()); n != tc.children {
				t.Errorf("the client runs %d children, want %d", n, tc.children)
			}
			for _, size := range tc.sizes {
				if err := dialRoundTrip(t, cli, bridge, args, size, tc.stall); err != nil {
					t.Fatalf("%d bytes: %v", size, err)
				}
			}
		})
	}
}

// dialRoundTrip dials the chain "c" and round-trips size bytes; where
// obfs4proxy's stall can hit (obfs3 inside its obfs4 client, 1-4% of
// setups, PROTOCOLS.md) it tries up to three times.
func dialRoundTrip(t *testing.T, cli *Client, bridge string, args metadata.Args, size int, stall bool) error {
	t.Helper()
	attempts := 1
	if stall {
		attempts = 3
	}
	var err error
	for i := 0; i < attempts; i++ {
		var conn *Conn
		if conn, err = cli.Dial(context.Background(), "c", bridge, args); err == nil {
			err = roundTrip(conn, size)
		}
		if err == nil {
			if s := conn.Stats(); s.Written != int64(size) || s.Read != int64(size) || s.Setup <= 0 {
				return fmt.Errorf("stats %+v, want %d bytes each way and a setup time", s, size)
			}
			return nil
		}
		if i+1 < attempts {
			t.Logf("attempt %d (obfs4proxy's stall on obfs3 inside obfs4?): %v", i+1, err)
		}
	}
	return err
}

// An unmanaged PT, started by someone else and named by its SOCKS port,
// is a hop like any: obfs4proxy's obfs3 inside an in-process obfs4, and
// the client starts no child for it.
func TestUnmanagedHop(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	echo := plainEcho(t)
	bridge, args := obfs4proxyBridge(t, echo, "obfs3", "obfs4")
	pt := startPT(t, obfs4proxyOrSkip(t), ptproc.Client, "", "obfs3")
	conf := fmt.Sprintf("ClientTransportPlugin obfs3 socks5 %s\nClientTransportPlugin obfs4 builtin\nAlias c obfs3|obfs4\n",
		pt.Methods()["obfs3"].Addr)
	cli := clientOf(t, conf, 20*time.Second, "c")
	for _, size := range []int{0, 1 << 20} {
		if err := dialRoundTrip(t, cli, bridge, args, size, false); err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
	}
	if pids := cli.Processes(); len(pids) != 0 {
		t.Errorf("the client started children for an unmanaged PT: %v", pids)
	}
}

// After many connections through chains that mix in-process hops and a
// PT child both ways, one in five failing (the bridge refuses, or the
// outermost hop's iat-mode is bad, once the hops inside it are asked),
// the client's goroutines and sockets come back to where they were.
func TestMixedNoLeaks(t *testing.T) {
	echo := plainEcho(t)
	bridge, args := obfs4proxyBridge(t, echo, "obfs2", "obfs3", "obfs4")
	cli := clientOf(t, "ClientTransportPlugin obfs2,obfs4 builtin\nClientTransportPlugin obfs3 exec OBFS4PROXY\nAlias c obfs2|obfs3|obfs4\n", 20*time.Second, "c")
	badIAT := metadata.Args{"2.cert": args["2.cert"], "2.iat-mode": {"x"}}
	one := func(i int) error {
		target, a, fail := bridge, args, true
		switch i % 5 {
		case 0:
			target = "127.0.0.1:1"
		case 1:
			a = badIAT
		default:
			fail = false
		}
		ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
		defer cancel()
		conn, err := cli.Dial(ctx, "c", target, a)
		if err == nil {
			err = roundTrip(conn, 1000)
		}
		if (err != nil) != fail {
			return fmt.Errorf("conn %d (meant to fail: %v): %v", i, fail, err)
		}
		return nil
	}
	one(2) // warm up
	base, _ := settle(func(usage) bool { return true })
	total := 200
	if testing.Short() {
		total = 50
	}
	if failures := runLoad(total, 10, one); len(failures) > 0 {
		t.Errorf("%d of %d connections went wrong; first: %q", len(failures), total, failures[:min(5, len(failures))])
	}
	after, ok := settle(func(u usage) bool { return u.goroutines <= base.goroutines && u.sockets <= base.sockets })
	if !ok {
		t.Errorf("after %d connections: %+v, before: %+v", total, after, base)
	}
}
