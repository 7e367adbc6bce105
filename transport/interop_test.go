package transport

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/net/proxy"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

const obfs4proxyPath = "/usr/bin/obfs4proxy"

// interopMethods are the methods both obfs4proxy and the module serve.
var interopMethods = []string{"obfs2", "obfs3", "obfs4"}

// startObfs4proxy runs Debian's obfs4proxy as tor would (PT 1.0, managed)
// in role, or skips the test when it is not installed.
func startObfs4proxy(t *testing.T, role ptproc.Role, orport string) *ptproc.Process {
	t.Helper()
	if _, err := os.Stat(obfs4proxyPath); err != nil {
		t.Skipf("interop needs Debian's obfs4proxy: %v", err)
	}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{Name: "obfs4proxy", Path: obfs4proxyPath, Role: role,
		Methods: interopMethods, StateDir: filepath.Join(t.TempDir(), "obfs4proxy"), ORPort: orport})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// socksDialer returns a dialer through a PT program's SOCKS5 port that
// hands it args the way tor does (PROTOCOLS.md A20).
func socksDialer(t *testing.T, socksAddr string, args metadata.Args) proxy.ContextDialer {
	t.Helper()
	var auth *proxy.Auth
	if enc := metadata.EncodeClientArgs(args); enc != "" {
		user, pass, err := metadata.SOCKS5Credentials(enc)
		if err != nil {
			t.Fatal(err)
		}
		auth = &proxy.Auth{User: string(user), Password: string(pass)}
	}
	d, err := proxy.SOCKS5("tcp", socksAddr, auth, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	return d.(proxy.ContextDialer)
}

// TestInteropObfs4proxyServer: the in-process clients against obfs4proxy
// as a PT 1.0 server whose ORPort echoes.
func TestInteropObfs4proxyServer(t *testing.T) {
	p := startObfs4proxy(t, ptproc.Server, plainEcho(t))
	smethods := p.ServerMethods()
	dialers := builtinDialers(t)
	for _, m := range interopMethods {
		t.Run(m, func(t *testing.T) {
			sm := smethods[m]
			for _, n := range sizes() {
				t.Run(sizeName(n), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
					defer cancel()
					c, err := dialers[m].Dial(ctx, sm.Args, sm.Addr.String(), nil)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					exchange(t, c, payload(n), false)
				})
			}
		})
	}
}

// TestInteropObfs4proxyClient: obfs4proxy as a PT 1.0 client (SOCKS5, the
// server's arguments as tor passes them) against the in-process servers.
func TestInteropObfs4proxyClient(t *testing.T) {
	p := startObfs4proxy(t, ptproc.Client, "")
	cmethods := p.Methods()
	for _, m := range interopMethods {
		t.Run(m, func(t *testing.T) {
			srv := startServer(t, m, nil)
			addr := serveEcho(t, srv)
			d := socksDialer(t, cmethods[m].Addr.String(), srv.ClientArgs())
			for _, n := range sizes() {
				t.Run(sizeName(n), func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
					defer cancel()
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					exchange(t, c, payload(n), false)
				})
			}
		})
	}
}

// TestInteropMixedChains runs chains with one hop in process and the other
// in obfs4proxy. Server side: the in-process client chain obfs3|obfs4
// against obfs4proxy's obfs4 server whose ORPort is the in-process obfs3
// server. Client side: in-process obfs4 over obfs4proxy's obfs4 client
// (the chain's outer hop is a DialFunc through its SOCKS port) against the
// in-process server chain obfs4|obfs4. (Not obfs3 inside obfs4proxy's
// obfs4 client: its known stall, PROTOCOLS.md, would hang a few percent
// of such setups.)
func TestInteropMixedChains(t *testing.T) {
	dialers := builtinDialers(t)
	t.Run("obfs3_obfs4proxy-obfs4", func(t *testing.T) {
		inner := startServer(t, "obfs3", nil)
		p := startObfs4proxy(t, ptproc.Server, serveEcho(t, inner))
		outer := p.ServerMethods()["obfs4"]
		chain := ClientChain(dialers["obfs3"], dialers["obfs4"])
		args := metadata.JoinHops([]metadata.Args{inner.ClientArgs(), outer.Args})
		mixedExchanges(t, func(ctx context.Context) (Conn, error) {
			return chain.Dial(ctx, args, outer.Addr.String(), nil)
		})
	})
	t.Run("obfs4_obfs4proxy-obfs4", func(t *testing.T) {
		_, server := chainOf(t, "obfs4", "obfs4")
		addr := serveEcho(t, server)
		perHop, err := metadata.SplitHops(server.ClientArgs(), 2)
		if err != nil {
			t.Fatal(err)
		}
		p := startObfs4proxy(t, ptproc.Client, "")
		outer := socksDialer(t, p.Methods()["obfs4"].Addr.String(), perHop[1])
		under := func(ctx context.Context, addr string) (net.Conn, error) { return outer.DialContext(ctx, "tcp", addr) }
		mixedExchanges(t, func(ctx context.Context) (Conn, error) {
			return dialers["obfs4"].Dial(ctx, perHop[0], addr, under)
		})
	})
}

func mixedExchanges(t *testing.T, dial func(context.Context) (Conn, error)) {
	for _, n := range sizes() {
		t.Run(sizeName(n), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			c, err := dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			exchange(t, c, payload(n), false)
		})
	}
}
