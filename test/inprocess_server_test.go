package test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/testhop"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/transport"
)

// inprocClient is the client side of a chain of methods, innermost first, in
// this process (testhop.Client).
func inprocClient(t testing.TB, methods ...string) transport.Dialer {
	t.Helper()
	d, cl, err := testhop.Client(t.TempDir(), methods...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return d
}

// overConn is oneAttributed's wrap for a client chain: it runs d's chain
// with args over the client's own socket to the bridge.
func overConn(d transport.Dialer, public string, args metadata.Args) func(*net.TCPConn) (io.ReadWriter, error) {
	return func(c *net.TCPConn) (io.ReadWriter, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return d.Dial(ctx, args, public, func(context.Context, string) (net.Conn, error) { return c, nil })
	}
}

// inprocSizes are the stream sizes of the byte-exact tests: 0 B to 64 MiB
// (16 MiB in -short).
func inprocSizes() []int {
	big := 64 << 20
	if testing.Short() {
		big = 16 << 20
	}
	return []int{0, 1, 65537, 1 << 20, big}
}

// serverMethod starts ptcombiner-server under a fake tor for alias with
// flags and returns its SMETHOD, failing the test without one.
func serverMethod(t *testing.T, ft *fakeTor, alias string, opts map[string]metadata.Args, flags ...string) (*serverCombiner, ptproc.Smethod) {
	t.Helper()
	sc := startServerCombiner(t, ft, []string{alias}, opts, flags...)
	m, ok := sc.methods[alias]
	if !ok {
		t.Fatalf("no SMETHOD %s: %v", alias, sc.errs)
	}
	return sc, m
}

// Through the ptcombiner-server binary, chains of in-process hops only
// (--builtin) start no child, and every stream reaches tor byte-exact with
// the client's own address and the alias; so do mixed chains, in-process
// obfs3 inside obfs4proxy's obfs4 and obfs4proxy's obfs3 inside in-process
// obfs4. The client is package transport's chain, in this process.
func TestServerInProcessBinary(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	for _, tc := range []struct {
		name     string
		chain    string
		children int
		flags    []string
	}{
		{"obfs3|obfs4 in process", "obfs3|obfs4", 0, []string{"--builtin", "obfs3,obfs4"}},
		{"obfs4|obfs4 in process", "obfs4|obfs4", 0, []string{"--builtin", "obfs4"}},
		{"builtin obfs3 inside obfs4proxy", "obfs3|obfs4", 1, []string{"--builtin", "obfs3", "--plugin", "obfs4=" + obfs4proxy}},
		{"obfs4proxy obfs3 inside builtin obfs4", "obfs3|obfs4", 1, []string{"--builtin", "obfs4", "--plugin", "obfs3=" + obfs4proxy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const alias = "c"
			ft := startFakeTor(t, alias)
			sc, m := serverMethod(t, ft, alias, nil, append(tc.flags, "--chain", alias+"="+tc.chain)...)
			if n := len(childPids(sc.proc.Pid())); n != tc.children {
				t.Errorf("ptcombiner-server runs %d children, want %d", n, tc.children)
			}
			d := inprocClient(t, strings.Split(tc.chain, "|")...)
			for _, size := range inprocSizes() {
				if err := oneAttributed(m.Addr.String(), overConn(d, m.Addr.String(), m.Args), size); err != nil {
					t.Fatalf("%d bytes: %v", size, err)
				}
			}
			ft.check(t, len(inprocSizes()))
		})
	}
}

// The products together: ptcombiner-client with obfs4proxy programs
// against ptcombiner-server serving obfs3|obfs4 and obfs4|obfs4 in
// process, without tor (--forward to an echo service), byte-exact.
func TestServerInProcessInterop(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	echo := echoServer(t)
	chains := []string{"--chain", "o3o4=obfs3|obfs4", "--chain", "o4o4=obfs4|obfs4"}
	lines := startStandalone(t, 2, bin("ptcombiner-server"), append([]string{"--builtin", "obfs3,obfs4",
		"--listen", "o3o4=127.0.0.1:0", "--listen", "o4o4=127.0.0.1:0", "--forward", echo, "--state-dir", t.TempDir()}, chains...)...)
	cli := startCombiner(t, []string{"o3o4", "o4o4"}, append([]string{"--plugin", "obfs3,obfs4=" + obfs4proxy}, chains...)...)
	// Only the obfs3|obfs4 chain is retried: at most one retry per four of
	// its cases and the others', or the test fails.
	budget := newRetryBudget(t, "obfs4proxy's stall on obfs3 inside obfs4", 0.25)
	for _, line := range lines {
		f := strings.Fields(line) // CHAIN alias addr ARGS args
		if len(f) != 5 || f[0] != "CHAIN" {
			t.Fatalf("server printed %q", line)
		}
		args, err := metadata.ParseClientArgs(f[4])
		if err != nil {
			t.Fatal(err)
		}
		attempts := 1
		if f[1] == "o3o4" { // obfs4proxy's client stalls on obfs3 inside obfs4 (PROTOCOLS.md A)
			attempts = 3
		}
		for _, size := range inprocSizes()[1:] { // obfs4proxy closes both ways at the first EOF: 0 B shows nothing
			err := budget.run(t, attempts, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				conn, err := cli.dial(ctx, f[1], f[2], args)
				cancel()
				if err != nil {
					return err
				}
				return roundTrip(t, conn, size)
			})
			if err != nil {
				t.Fatalf("%s, %d bytes: %v", f[1], size, err)
			}
		}
	}
}

// The attribution race through the binary (3000 connections at 300) for
// mixed chains of test PT children, which wait up to 30 ms before they
// report (so arrivals reorder), and an in-process hop: outside the
// children, and inside them. The in-process hop is obfs2, the builtin of
// least CPU: obfs4's handshakes under -race, 300 at once, starve the
// children's Extended ORPort handshakes past goptlib's 5 s deadline
// (DialOr), which says nothing of attribution.
func TestServerInProcessAttributionRace(t *testing.T) {
	total, workers := 3000, 300
	if testing.Short() {
		total, workers = 300, 50
	}
	for _, tc := range []struct {
		name, chain string
		opts        metadata.Args
	}{
		{"inprocess outside", "test|test|obfs2", metadata.Args{"0.key": {"41"}, "1.key": {"42"}, "0.delay": {"30"}, "1.delay": {"30"}}},
		{"inprocess inside", "obfs2|test|test", metadata.Args{"1.key": {"43"}, "2.key": {"44"}, "1.delay": {"30"}, "2.delay": {"30"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const alias = "mix"
			ft := startFakeTor(t, alias)
			sc, m := serverMethod(t, ft, alias, map[string]metadata.Args{alias: tc.opts},
				"--builtin", "obfs2", "--plugin", "test="+bin("testpt"), "--chain", alias+"="+tc.chain)
			if n := len(childPids(sc.proc.Pid())); n != 2 {
				t.Fatalf("ptcombiner-server runs %d children, want 2", n)
			}
			d := inprocClient(t, strings.Split(tc.chain, "|")...)
			failures := runLoad(total, workers, func(i int) error {
				return oneAttributed(m.Addr.String(), overConn(d, m.Addr.String(), m.Args), 100+i%2000)
			})
			if len(failures) > 0 {
				t.Errorf("%d of %d connections failed; first: %q", len(failures), total, failures[:min(5, len(failures))])
			}
			ft.check(t, total)
		})
	}
}

// What the bridge cannot serve in process gets an SMETHOD-ERROR with the
// reason, and starts nothing: a builtin that does not exist, one without
// a server side, malformed obfs4 state in the slot's state directory, an
// unmanaged SOCKS PT (client side only); the chain beside them still runs.
func TestServerInProcessStartErrors(t *testing.T) {
	ft := startFakeTor(t, "x")
	state := t.TempDir()
	broken := filepath.Join(state, "ptcombiner", "builtin-broken-0")
	if err := os.MkdirAll(broken, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, "obfs4_state.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	aliases := []string{"nosuch", "scramblesuit", "broken", "socks", "good"}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-server", Path: bin("ptcombiner-server"), Role: ptproc.Server, Methods: aliases, StateDir: state,
		Args: []string{"--builtin", "obfs4,nosuch,scramblesuit", "--plugin", "sx=socks5:127.0.0.1:9",
			"--chain", "broken=obfs4", "--chain", "socks=sx", "--chain", "good=obfs4"},
		ExtORPort: ft.addr, AuthCookieFile: ft.cookiePath, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("starting ptcombiner-server: %v", err)
	}
	defer p.Close()
	want := map[string]string{
		"nosuch":       `no builtin method "nosuch"`,
		"scramblesuit": "scramblesuit has no server side",
		"broken":       "obfs4_state.json is malformed",
		"socks":        "client-side plugin",
	}
	errs := p.MethodErrors()
	for alias, part := range want {
		if !strings.Contains(errs[alias], part) {
			t.Errorf("SMETHOD-ERROR %s %q, want %q in it", alias, errs[alias], part)
		}
	}
	if _, ok := p.ServerMethods()["good"]; !ok {
		t.Errorf("no SMETHOD good: %v", errs)
	}
	if n := len(childPids(p.Pid())); n != 0 {
		t.Errorf("%d children started", n)
	}
}

// The cert of an in-process obfs4 hop never moves: it is unchanged across
// a restart, reordered --chain flags and transports, and a hop moved from
// obfs4proxy to the builtin obfs4 (the two keep the same obfs4_state.json
// in the slot's directory).
func TestBridgeInProcessCertsSurvive(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	state := t.TempDir()
	chains := []string{"--chain", "o=obfs4", "--chain", "o3o4=obfs3|obfs4", "--chain", "o4o4=obfs4|obfs4"}
	opts := map[string]metadata.Args{"o3o4": {"1.iat-mode": {"1"}}}
	aliases := []string{"o", "o3o4", "o4o4"}
	viaProgram := bridgeLayout{flags: append([]string{"--plugin", "obfs3,obfs4=" + obfs4proxy}, chains...), aliases: aliases, opts: opts}
	seen := map[string]string{}
	sameCerts(t, "obfs4proxy", seen, viaProgram.certs(t, state))

	builtin := viaProgram
	builtin.flags = append([]string{"--builtin", "obfs3,obfs4"}, chains...)
	sameCerts(t, "builtin", seen, builtin.certs(t, state))
	sameCerts(t, "restart", seen, builtin.certs(t, state))
	reordered := builtin
	reordered.flags = []string{"--chain", "o4o4=obfs4|obfs4", "--chain", "o=obfs4", "--builtin", "obfs4,obfs3", "--chain", "o3o4=obfs3|obfs4"}
	reordered.aliases = []string{"o4o4", "o3o4", "o"}
	sameCerts(t, "reordered", seen, reordered.certs(t, state))
	mixed := builtin
	mixed.flags = append([]string{"--builtin", "obfs4", "--plugin", "obfs3=" + obfs4proxy}, chains...)
	sameCerts(t, "obfs3 back in obfs4proxy", seen, mixed.certs(t, state))
	t.Logf("certs: %v", seen)
	if len(seen) != 4 {
		t.Errorf("certs seen: %v, want 4 (o 0, o3o4 1, o4o4 0 and 1)", seen)
	}
}
