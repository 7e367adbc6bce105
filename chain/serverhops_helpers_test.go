package chain

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ptcombiner/ptcombiner/internal/testhop"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// startServerConfig starts a Server of cfg with opt (a fresh state
// directory unless opt has one, logs kept for a failure) on binds, fails
// the test if Start does, and returns it with every Published; those
// without an error are in the testServer's pubs.
func startServerConfig(t *testing.T, cfg *Config, opt ServerOptions, binds []Bind) (*testServer, []Published) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	ts := &testServer{logs: &logBuf{}, pubs: map[string]Published{}}
	opt.Config, opt.Logger = cfg, newLogger(ts.logs)
	if opt.StateDir == "" {
		opt.StateDir = t.TempDir()
	}
	ts.srv = NewServer(opt)
	t.Cleanup(func() {
		ts.srv.Close()
		if t.Failed() {
			t.Logf("logs: %s", ts.logs.digest(15))
		}
	})
	pubs, err := ts.srv.Start(context.Background(), binds)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pubs {
		if p.Err == nil {
			ts.pubs[p.Alias] = p
		}
	}
	return ts, pubs
}

// addChains adds chains ("alias=test|test") to cfg and returns a Bind for
// each: at addrs[alias], or on loopback port 0.
func addChains(t *testing.T, cfg *Config, addrs map[string]*net.TCPAddr, chains ...string) []Bind {
	t.Helper()
	var binds []Bind
	for _, ch := range chains {
		if err := cfg.AddChainFlag(ch); err != nil {
			t.Fatal(err)
		}
		alias, _, _ := strings.Cut(ch, "=")
		addr := addrs[alias]
		if addr == nil {
			addr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
		}
		binds = append(binds, Bind{Alias: alias, Addr: addr})
	}
	return binds
}

// hopsConfig is a configuration of flags ("--builtin obfs3,obfs4",
// "--plugin test=PATH", "--chain a=x|y") and ServerTransportOptions by
// alias; it returns it with a loopback Bind for every chain.
func hopsConfig(t *testing.T, opts map[string]metadata.Args, flags ...string) (*Config, []Bind) {
	t.Helper()
	cfg := &Config{ServerOptions: opts}
	var binds []Bind
	for i := 0; i+1 < len(flags); i += 2 {
		var err error
		switch v := flags[i+1]; flags[i] {
		case "--builtin":
			err = cfg.AddBuiltinFlag(v)
		case "--plugin":
			err = cfg.AddPluginFlag(v)
		case "--chain":
			err = cfg.AddChainFlag(v)
			alias, _, _ := strings.Cut(v, "=")
			binds = append(binds, Bind{Alias: alias, Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}})
		default:
			err = fmt.Errorf("unknown flag %s", flags[i])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return cfg, binds
}

// needObfs4proxy returns obfs4proxy's path, or skips the test where it is
// not installed (CI installs it and must not skip).
func needObfs4proxy(t *testing.T) string {
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

// xorHop is the test PT's protocol as an in-process hop (testhop): "test"
// speaks to the test PT program, "xor" is an in-process hop of the tests'
// own (ServerOptions.InProcess).
func xorHop(method string) transport.Bytestream { return testhop.TestPT(method) }

// clientFor is the client side of a chain of methods, innermost first, in
// this process (testhop.Client).
func clientFor(t *testing.T, methods ...string) transport.Dialer {
	t.Helper()
	d, cl, err := testhop.Client(t.TempDir(), methods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return d
}

// dialChain dials p through d with p's published arguments, and returns
// the connection and the local address of its socket: the client address
// the bridge's tor must hear as USERADDR.
func dialChain(ctx context.Context, d transport.Dialer, p Published, args metadata.Args) (transport.Conn, string, error) {
	var local string
	under := func(ctx context.Context, addr string) (net.Conn, error) {
		c, err := transport.Direct(ctx, addr)
		if err == nil {
			local = c.LocalAddr().String()
		}
		return c, err
	}
	if args == nil {
		args = p.Args
	}
	c, err := d.Dial(ctx, args, p.Addr.String(), under)
	return c, local, err
}
