package test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
)

// socksProxy is an upstream SOCKS5 proxy (tor's Socks5Proxy) that records
// the targets it is asked for.
type socksProxy struct {
	addr    string
	mu      sync.Mutex
	targets []string
}

func startSocksProxy(t *testing.T) *socksProxy {
	t.Helper()
	p := &socksProxy{}
	p.addr = serveLoopback(t, func(c *net.TCPConn) {
		req, err := shim.ReadRequest(c, 5*time.Second)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.targets = append(p.targets, req.Target)
		p.mu.Unlock()
		up, err := net.Dial("tcp", req.Target)
		if err != nil {
			shim.Reject(c, shim.ReplyCodeFor(err))
			return
		}
		shim.Grant(c)
		shim.Pipe(context.Background(), c, up.(*net.TCPConn))
	})
	return p
}

// TOR_PT_PROXY reaches the outermost hop only: the proxy is asked for the
// bridge and nothing else, and the program that also serves inner hops runs
// a second time, without the proxy, for them.
func TestClientProxyOutermostOnly(t *testing.T) {
	echo := echoServer(t)
	bridge, args := serverChain(t, echo, testHops(2))
	proxy := startSocksProxy(t)
	conf := writeConfig(t, "ClientTransportPlugin test exec "+bin("testpt")+" -accept-proxy\nAlias t2 test|test\n")
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: bin("ptcombiner-client"), Args: []string{"--config", conf},
		Role: ptproc.Client, Methods: []string{"t2"}, StateDir: t.TempDir(), ProxyURL: "socks5://" + proxy.addr,
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("with a proxy: %v", err) // ptproc requires PROXY DONE when a proxy is set
	}
	defer p.Close()
	c := &combiner{proc: p, methods: p.Methods(), errs: p.MethodErrors()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.dial(ctx, "t2", bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, conn, 100000); err != nil {
		t.Fatal(err)
	}
	proxy.mu.Lock()
	targets := append([]string(nil), proxy.targets...)
	proxy.mu.Unlock()
	if len(targets) != 1 || targets[0] != bridge {
		t.Errorf("the proxy was asked for %v, want only the bridge %s", targets, bridge)
	}
	if kids := childPids(p.Pid()); len(kids) != 2 {
		t.Errorf("children: %v, want 2 (one with the proxy for the outer hop, one without)", kids)
	}
}

// A chain whose outermost program refuses the proxy: PROXY-ERROR, since no
// chain can honour tor's proxy.
func TestClientProxyRefused(t *testing.T) {
	proxy := startSocksProxy(t)
	_, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: bin("ptcombiner-client"), Args: []string{"--plugin", "test=" + bin("testpt"), "--chain", "t2=test|test"},
		Role: ptproc.Client, Methods: []string{"t2"}, StateDir: t.TempDir(), ProxyURL: "socks5://" + proxy.addr,
		StartTimeout: 20 * time.Second, Logger: testLogger(t),
	})
	if err == nil || !strings.Contains(err.Error(), "PROXY-ERROR") {
		t.Errorf("err = %v, want PROXY-ERROR", err)
	}
}
