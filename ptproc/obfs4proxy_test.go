package ptproc

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

const obfs4proxyPath = "/usr/bin/obfs4proxy"

// TestRealObfs4proxy runs Debian's obfs4proxy in both roles and checks what
// PROTOCOLS.md says it prints.
func TestRealObfs4proxy(t *testing.T) {
	if _, err := os.Stat(obfs4proxyPath); err != nil {
		t.Skipf("no %s: %v", obfs4proxyPath, err)
	}
	defer goleak.VerifyNone(t)
	dir := t.TempDir()

	t.Run("client", func(t *testing.T) {
		p, err := Start(context.Background(), Spec{Name: "obfs4proxy", Path: obfs4proxyPath, Role: Client,
			Methods: []string{"obfs4", "obfs3"}, StateDir: filepath.Join(dir, "client")})
		if err != nil {
			t.Fatal(err)
		}
		ms := p.Methods()
		for _, name := range []string{"obfs4", "obfs3"} {
			if m, ok := ms[name]; !ok || m.Protocol != "socks5" || !m.Addr.IP.IsLoopback() {
				t.Errorf("CMETHOD %s = %+v, %v", name, m, ok)
			}
		}
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		assertGone(t, p.Pid())
	})

	t.Run("server", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		orport := l.Addr().String()
		l.Close() // a closed port: no connection is made in this test
		p, err := Start(context.Background(), Spec{Name: "obfs4proxy", Path: obfs4proxyPath, Role: Server,
			Methods: []string{"obfs4", "obfs3"}, StateDir: filepath.Join(dir, "server"), ORPort: orport})
		if err != nil {
			t.Fatal(err)
		}
		ms := p.ServerMethods()
		o4, o3 := ms["obfs4"], ms["obfs3"]
		if len(o4.Args["cert"]) != 1 || o4.Args["cert"][0] == "" || len(o4.Args["iat-mode"]) != 1 {
			t.Errorf("obfs4 = %+v", o4)
		}
		if o3.Addr == nil || o3.Args == nil || len(o3.Args) != 0 {
			t.Errorf("obfs3 = %+v", o3)
		}
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		assertGone(t, p.Pid())
	})
}
