package chain

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// inProcessBridge serves the server side of the chain methods (innermost
// first) in this process, in front of an echo, and returns its address and
// the client arguments a bridge publishes.
func inProcessBridge(t *testing.T, methods ...string) (string, metadata.Args) {
	t.Helper()
	var hops []transport.Server
	for _, m := range methods {
		st, err := transport.BuiltinServer(m)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := st.Start(context.Background(), transport.ServerConfig{StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		hops = append(hops, srv)
	}
	ch := transport.ServerChain(hops...)
	ln := transport.Listen(ch, listenLoopback(t))
	t.Cleanup(func() { ch.Close() })
	serveEach(t, ln, func(c net.Conn) { io.Copy(c, c) })
	return ln.Addr().String(), ch.ClientArgs()
}

// Bad hops of the new kinds get a clear error at Start, naming the hop and
// the reason, only for the chains that use them; nothing runs for them and
// nothing is left behind.
func TestStartErrorsOfKinds(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	cfg, err := Parse(strings.NewReader(
		"ClientTransportPlugin obfs3,obfs4,obfs9 builtin\n"+
			"ClientTransportPlugin dead socks5 127.0.0.1:1\n"+
			"Alias o9 obfs3|obfs9\n"+
			"Alias od obfs4|dead\n"+
			"Alias ok obfs3|obfs4\n"), "test config", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	cli := NewClient(ClientOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(&logBuf{})})
	defer cli.Close()
	res := cli.Start(context.Background(), []string{"o9", "obfs9", "od", "dead", "ok"})
	for name, want := range map[string]string{
		"o9":    `hop 1 "obfs9" (in-process): transport: no builtin method "obfs9" (there are [obfs2 obfs3 obfs4 scramblesuit])`,
		"obfs9": `hop 0 "obfs9" (in-process): transport: no builtin method "obfs9"`,
		"od":    `hop 1 "dead": the unmanaged PT at 127.0.0.1:1 (test config:2) does not answer: dial tcp 127.0.0.1:1: connect: connection refused`,
		"dead":  `hop 0 "dead": the unmanaged PT at 127.0.0.1:1`,
	} {
		if err := res[name]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Start(%s) = %v, want %q", name, err, want)
		}
	}
	if err, ok := res["ok"]; !ok || err != nil {
		t.Errorf("Start(ok) = %v, want it ready", err)
	}
	if pids := cli.Processes(); len(pids) != 0 {
		t.Errorf("children: %v, want none", pids)
	}
	if _, err := cli.Dial(context.Background(), "o9", "127.0.0.1:1", nil); err == nil || !strings.Contains(err.Error(), "no builtin method") {
		t.Errorf("Dial(o9) = %v, want the refusal", err)
	}
}

// An all-in-process chain runs without a child, carries data, and counts
// it; one hop's bad arguments name that hop.
func TestInProcessChain(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	bridge, args := inProcessBridge(t, "obfs3", "obfs4", "obfs4")
	cli := clientOf(t, "ClientTransportPlugin obfs3,obfs4 builtin\nAlias c obfs3|obfs4|obfs4\n", 0, "c")
	if err := dialRoundTrip(t, cli, bridge, args, 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if pids := cli.Processes(); len(pids) != 0 {
		t.Errorf("children: %v, want none", pids)
	}
	bad := metadata.Args{"1.cert": {"x"}}
	for k, v := range args {
		if strings.HasPrefix(k, "2.") {
			bad[k] = v
		}
	}
	_, err := cli.Dial(context.Background(), "c", bridge, bad)
	if err == nil || !strings.Contains(err.Error(), "chain c: hop 1 (obfs4, in-process): obfs4:") {
		t.Errorf("Dial with a bad cert for hop 1 = %v, want hop 1 named", err)
	}
}

// fakeProxy is an upstream proxy of one of TOR_PT_PROXY's types; it
// records what it was asked for.
type fakeProxy struct {
	url     string
	mu      sync.Mutex
	targets []string
}

func (p *fakeProxy) record(target string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.targets = append(p.targets, target)
}

func startFakeProxy(t *testing.T, scheme string) *fakeProxy {
	t.Helper()
	p := &fakeProxy{}
	ln := listenLoopback(t)
	serveEach(t, ln, func(c net.Conn) {
		if up := p.serve(scheme, c); up != nil {
			pipe(context.Background(), c, up, nil, nil)
		}
	})
	p.url = scheme + "://" + ln.Addr().String()
	if scheme == "http" {
		p.url = "http://user:pa%3Ass@" + ln.Addr().String()
	}
	return p
}

// serve answers one proxy request, and returns the connection to its
// target, or nil.
func (p *fakeProxy) serve(scheme string, c net.Conn) net.Conn {
	c.SetDeadline(time.Now().Add(eventCeiling))
	br := bufio.NewReader(c)
	var target string
	var grant func() error
	switch scheme {
	case "socks5":
		req, err := shim.ReadRequest(c, eventCeiling)
		if err != nil {
			return nil
		}
		target, grant = req.Target, func() error { return shim.Grant(c) }
	case "socks4a":
		var head [8]byte
		io.ReadFull(br, head[:])
		br.ReadString(0) // USERID
		host := net.IP(head[4:8]).String()
		if head[4] == 0 && head[5] == 0 && head[6] == 0 && head[7] != 0 { // 0.0.0.x: a name follows
			name, _ := br.ReadString(0)
			host = strings.TrimSuffix(name, "\x00")
		}
		target = net.JoinHostPort(host, fmt.Sprint(int(head[2])<<8|int(head[3])))
		grant = func() error { _, err := c.Write([]byte{0, 0x5a, 0, 0, 0, 0, 0, 0}); return err }
	case "http":
		req, err := http.ReadRequest(br)
		if err != nil || req.Method != http.MethodConnect ||
			req.Header.Get("Proxy-Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte("user:pa:ss")) {
			io.WriteString(c, "HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
			return nil
		}
		target, grant = req.Host, func() error { _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n"); return err }
	}
	p.record(target)
	up, err := net.Dial("tcp", target)
	if err != nil {
		return nil
	}
	c.SetDeadline(time.Time{})
	if grant() != nil {
		up.Close()
		return nil
	}
	return up
}

// TOR_PT_PROXY reaches an in-process outermost hop too, in each of its
// three types: the proxy is asked for the bridge, and only for it.
func TestInProcessOutermostThroughProxy(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	bridge, args := inProcessBridge(t, "obfs3", "obfs4")
	cfg, err := Parse(strings.NewReader("ClientTransportPlugin obfs3,obfs4 builtin\nAlias c obfs3|obfs4\n"), "test config", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	for _, scheme := range []string{"socks5", "socks4a", "http"} {
		t.Run(scheme, func(t *testing.T) {
			proxy := startFakeProxy(t, scheme)
			cli := NewClient(ClientOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(&logBuf{}), ProxyURL: proxy.url})
			defer cli.Close()
			if err := cli.Start(context.Background(), []string{"c"})["c"]; err != nil {
				t.Fatal(err)
			}
			if err := dialRoundTrip(t, cli, bridge, args, 100000, false); err != nil {
				t.Fatal(err)
			}
			proxy.mu.Lock()
			defer proxy.mu.Unlock()
			if len(proxy.targets) != 1 || proxy.targets[0] != bridge {
				t.Errorf("the proxy was asked for %v, want the bridge %s once", proxy.targets, bridge)
			}
		})
	}
}

// With tor's proxy, a chain whose outermost hop is an unmanaged PT (which
// would bypass the proxy) or whose in-process outermost hop cannot use the
// proxy's type is refused at Start.
func TestProxyRefusedForOutermost(t *testing.T) {
	cfg, err := Parse(strings.NewReader(
		"ClientTransportPlugin obfs4 builtin\nClientTransportPlugin un socks5 127.0.0.1:9\nAlias u obfs4|un\n"), "c", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	for proxy, want := range map[string]map[string]string{
		"socks5://127.0.0.1:9": {"u": `hop 1 "un" is an unmanaged PT (socks5 127.0.0.1:9): it reaches the network its own way`},
		"socks4://127.0.0.1:9": {"obfs4": `hop 0 "obfs4" (in-process): tor's proxy type "socks4" is not supported`},
	} {
		cli := NewClient(ClientOptions{Config: cfg, StateDir: filepath.Join(t.TempDir(), "s"), ProxyURL: proxy, Logger: newLogger(&logBuf{})})
		res := cli.Start(context.Background(), []string{"u", "obfs4"})
		cli.Close()
		for name, w := range want {
			if err := res[name]; err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("proxy %s: Start(%s) = %v, want %q", proxy, name, err, w)
			}
		}
	}
}

// rudePT is an unmanaged PT that connects to the target it is asked for,
// proves that bytes flow through it (a ping echoed back), and then refuses
// the SOCKS request, leaving its connection to the target open until the
// test ends.
func rudePT(t *testing.T) string {
	t.Helper()
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	ln := listenLoopback(t)
	serveEach(t, ln, func(c net.Conn) {
		req, err := shim.ReadRequest(c, eventCeiling)
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", req.Target)
		if err != nil {
			return
		}
		mu.Lock()
		held = append(held, up)
		mu.Unlock()
		up.SetDeadline(time.Now().Add(eventCeiling))
		ping := make([]byte, 4)
		if _, err := up.Write([]byte("ping")); err == nil {
			io.ReadFull(up, ping)
		}
		shim.Reject(c, shim.RepGeneralFailure)
	})
	return ln.Addr().String()
}

// A PT that fails after the hops outside it are up and piping is named,
// and the pipe to it is ended at once, not at the client's Close, even
// when the PT keeps its end open.
func TestPTFailsAfterItsPipeIsUp(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	bridge, args := inProcessBridge(t, "obfs4")
	rude := rudePT(t)
	cli := clientOf(t, "ClientTransportPlugin rude socks5 "+rude+"\nClientTransportPlugin obfs4 builtin\nAlias c rude|obfs4\n", 0, "c")
	base, _ := settle(func(usage) bool { return true })
	for range 20 {
		_, err := cli.Dial(context.Background(), "c", bridge, metadata.Args{"1.cert": args["0.cert"], "1.iat-mode": args["0.iat-mode"]})
		var he *HopError
		if !errors.As(err, &he) || he.Hop != 0 || he.ReplyCode() != shim.RepGeneralFailure ||
			!strings.Contains(err.Error(), "hop 0 (rude, unmanaged PT at "+rude+") could not reach "+bridge+" through hop 1's shim") {
			t.Fatalf("Dial = %v, want hop 0 named, with its general failure", err)
		}
	}
	// The rude PT, in this process, holds 20 sockets of its own.
	if after, ok := settle(func(u usage) bool { return u.goroutines <= base.goroutines && u.sockets <= base.sockets+20 }); !ok {
		t.Errorf("after 20 failed setups: %+v, before: %+v (and the PT's 20 sockets)", after, base)
	}
}
