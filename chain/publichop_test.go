package chain

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// freeAddr is a loopback address whose port was free a moment ago: a
// public address that a child, not the server, is to listen on.
func freeAddr(t *testing.T) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr)
}

// frontConfig is the test PT offering test and testfront, testfront
// declared indirect (as meek or snowflake are known to be), with chains
// ("alias=test|testfront") bound to the addresses given by alias (loopback
// port 0 for the others).
func frontConfig(t *testing.T, opts map[string]metadata.Args, addrs map[string]*net.TCPAddr, chains ...string) (*Config, []Bind) {
	t.Helper()
	cfg := &Config{ServerOptions: opts}
	if err := errors.Join(cfg.AddPluginFlag("test,testfront="+testpt), cfg.AddIndirectFlag("testfront")); err != nil {
		t.Fatal(err)
	}
	return cfg, addChains(t, cfg, addrs, chains...)
}

// lastMeta is what tor heard of the latest stream.
func (e *echoTor) lastMeta(t *testing.T) extorport.Meta {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.metas) == 0 {
		t.Fatal("tor saw no stream")
	}
	return e.metas[len(e.metas)-1]
}

// An indirect PT's server as the outermost hop is given the chain's public
// address and listens there itself (the server does not); each client it
// reports on its Extended ORPort is a chain connection, attributed to tor
// with exactly the USERADDR it reported (IP:1 as meek-server's, or none),
// while the hop inside it is stamped and matched as ever. It runs in a
// child of its own; a port 0 it got is kept when it is restarted.
func TestServerOuterHopListens(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the server's cleanup
	tor := startEchoTor(t)
	mAddr := freeAddr(t)
	cfg, binds := frontConfig(t, map[string]metadata.Args{
		"m": {"0.key": {"21"}, "1.key": {"22"}, "1.useraddr": {"ip1"}},
		"n": {"useraddr": {"none"}, "key": {"23"}},
	}, map[string]*net.TCPAddr{"m": mAddr}, "m=test|testfront", "n=testfront")
	ts, pubs := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath}, binds)
	for _, p := range pubs {
		if p.Err != nil {
			t.Fatalf("%s: %v", p.Alias, p.Err)
		}
	}
	if got := ts.pubs["m"].Addr.String(); got != mAddr.String() {
		t.Errorf("m published %s, want the address it was given, %s", got, mAddr)
	}
	if got := ts.pubs["m"].Args; !sameArgs(got, metadata.Args{"0.key": {"21"}, "1.key": {"22"}}) {
		t.Errorf("m published args %v", got)
	}
	// One child for hop 0 of m, one for each hop that listens itself.
	if pids := ts.srv.Processes(); len(pids) != 3 {
		t.Errorf("server runs %d children, want 3: %v", len(pids), pids)
	}

	for _, tc := range []struct {
		alias, useraddr string
		methods         []string
		keys            []byte
	}{
		{"m", "127.0.0.1:1", []string{"test", "testfront"}, []byte{21, 22}},
		{"n", "", []string{"testfront"}, []byte{23}},
	} {
		c, err := dialTestPTMethods(ts.pubs[tc.alias].Addr.String(), tc.methods, tc.keys)
		if err != nil {
			t.Fatal(err)
		}
		c.conn.SetDeadline(time.Now().Add(eventCeiling))
		if err := c.echo("", 100000); err != nil {
			t.Fatalf("%s: %v", tc.alias, err)
		}
		c.conn.Close()
		if m := tor.lastMeta(t); m.UserAddr != tc.useraddr || m.Transport != tc.alias {
			t.Errorf("%s: tor heard USERADDR %q TRANSPORT %q, want %q and %q", tc.alias, m.UserAddr, m.Transport, tc.useraddr, tc.alias)
		}
	}
	waitFor(t, "the stamps to be taken", eventCeiling, func() bool { return ts.srv.PendingStamps() == 0 })

	// n's port was 0: the restarted child listens where n was published.
	var nChild *serverChild
	ts.srv.mu.Lock()
	for _, c := range ts.srv.children {
		if c.public != nil && c.public.chain.alias == "n" {
			nChild = c
		}
	}
	ts.srv.mu.Unlock()
	old := nChild.sup.Pid()
	syscall.Kill(old, syscall.SIGKILL)
	waitFor(t, "n's child to be restarted", eventCeiling, func() bool {
		p := nChild.sup.Pid()
		return p != 0 && p != old
	})
	if a, err := nChild.addr("testfront"); err != nil || a.String() != ts.pubs["n"].Addr.String() {
		t.Fatalf("restarted child listens on %v (%v), want %v", a, err, ts.pubs["n"].Addr)
	}
	c, err := dialTestPTMethods(ts.pubs["n"].Addr.String(), []string{"testfront"}, []byte{23})
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	c.conn.SetDeadline(time.Now().Add(eventCeiling))
	if err := c.echo("", 1000); err != nil {
		t.Fatalf("n after its child's restart: %v", err)
	}
}

// --max-conns counts the chain connections that a hop listening itself
// reports, at their arrival, and refuses those above the cap (the child's
// session is denied on its Extended ORPort); the first SIGINT's drain
// refuses new arrivals while open connections go on.
func TestServerOuterHopListensCapAndDrain(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the server's cleanup
	tor := startEchoTor(t)
	cfg, binds := frontConfig(t, map[string]metadata.Args{"m": {"0.key": {"21"}, "1.key": {"22"}}}, nil, "m=test|testfront")
	ts, pubs := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath, MaxConns: 1}, binds)
	if pubs[0].Err != nil {
		t.Fatal(pubs[0].Err)
	}
	addr := ts.pubs["m"].Addr.String()
	open := func() *testptConn {
		t.Helper()
		c, err := dialTestPTMethods(addr, []string{"test", "testfront"}, []byte{21, 22})
		if err != nil {
			t.Fatal(err)
		}
		c.conn.SetDeadline(time.Now().Add(eventCeiling))
		t.Cleanup(func() { c.conn.Close() })
		return c
	}
	refused := func(c *testptConn, what string) {
		t.Helper()
		c.Write([]byte("x"))
		if _, err := io.ReadFull(c, make([]byte, 1)); err == nil {
			t.Errorf("%s carried data", what)
		}
	}
	first := open()
	if err := first.echo("", 1000); err != nil {
		t.Fatal(err)
	}
	refused(open(), "a connection above --max-conns 1")
	if err := waitLog(ts.logs, eventCeiling, "connection cap reached", "max_conns=1"); err != nil {
		t.Error(err)
	}
	if err := first.echo("", 1000); err != nil {
		t.Fatalf("the connection below the cap, after the refusal: %v", err)
	}
	first.conn.Close()
	waitFor(t, "the first connection to be released", eventCeiling, func() bool { return ts.srv.open.Load() == 0 })
	second := open()
	if err := second.echo("", 1000); err != nil {
		t.Fatalf("a connection once the first was closed: %v", err)
	}

	ts.srv.CloseListeners([]*net.TCPAddr{ts.pubs["m"].Addr})
	refused(open(), "a connection after the drain began")
	if err := waitLog(ts.logs, eventCeiling, "refused an Extended ORPort connection", "the chain is not served"); err != nil {
		t.Error(err)
	}
	if err := second.echo("", 1000); err != nil {
		t.Fatalf("an open connection during the drain: %v", err)
	}
	second.conn.Close()
	select {
	case <-ts.srv.Drained():
	case <-time.After(eventCeiling):
		t.Fatal("not drained after the last connection closed")
	}
}

// A direct PT named by OuterListens (--outer-listens) listens on the
// public address itself too, in a child of its own; it reports the real
// client's socket, which reaches tor unchanged.
func TestServerOuterListensDirect(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the server's cleanup
	tor := startEchoTor(t)
	cfg, binds := hopsConfig(t, map[string]metadata.Args{"o": {"key": {"21"}}}, "--plugin", "test="+testpt, "--chain", "o=test|test")
	if err := cfg.AddOuterListensFlag("o"); err != nil {
		t.Fatal(err)
	}
	ts, pubs := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath}, binds)
	if pubs[0].Err != nil {
		t.Fatal(pubs[0].Err)
	}
	if pids := ts.srv.Processes(); len(pids) != 2 {
		t.Errorf("server runs %d children, want 2 (hop 0's, and hop 1's of its own): %v", len(pids), pids)
	}
	c, err := dialTestPT(ts.pubs["o"].Addr.String(), []byte{21, 21})
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	c.conn.SetDeadline(time.Now().Add(eventCeiling))
	if err := c.echo("", 100000); err != nil {
		t.Fatal(err)
	}
	if m := tor.lastMeta(t); m.UserAddr != c.conn.LocalAddr().String() || m.Transport != "o" {
		t.Errorf("tor heard USERADDR %q TRANSPORT %q, want the client's socket %s and o", m.UserAddr, m.Transport, c.conn.LocalAddr())
	}
}

// A bad declaration is the chain's SMETHOD-ERROR, before any program runs:
// an indirect hop that is not outermost, two chains given one address
// (whoever would listen there), an in-process outermost hop named by
// OuterListens. The other chains are served.
func TestServerOuterHopDeclarationErrors(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the server's cleanup
	shared := freeAddr(t)
	wild := &net.TCPAddr{IP: net.IPv4zero, Port: freeAddr(t).Port}
	cfg, binds := frontConfig(t, nil, map[string]*net.TCPAddr{
		"a": shared, "b": shared, "w": wild, "x": {IP: net.IPv4(127, 0, 0, 1), Port: wild.Port},
	}, "bad=testfront|test", "a=test|testfront", "b=test", "w=testfront", "x=test", "ok=test")
	if err := errors.Join(cfg.AddBuiltinFlag("obfs4"), cfg.AddChainFlag("ol=obfs4"), cfg.AddOuterListensFlag("ol")); err != nil {
		t.Fatal(err)
	}
	binds = append(binds, Bind{Alias: "ol", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}})
	ts, pubs := startServerConfig(t, cfg, ServerOptions{TorORPort: "127.0.0.1:1"}, binds)
	want := map[string][]string{
		"bad": {`hop 0 "testfront" is an indirect PT`, "outermost"},
		"a":   {"chains a and b are both given " + shared.String()},
		"b":   {"chains b and a are both given " + shared.String()},
		"w":   {"chains w and x are both given 0.0.0.0:" + strconv.Itoa(wild.Port)},
		"x":   {"chains x and w are both given"},
		"ol":  {`hop 0 "obfs4" is in-process`},
	}
	for _, p := range pubs {
		if p.Alias == "ok" {
			if p.Err != nil {
				t.Errorf("ok: %v", p.Err)
			}
			continue
		}
		for _, w := range want[p.Alias] {
			if p.Err == nil || !strings.Contains(p.Err.Error(), w) {
				t.Errorf("%s: %v, want an error with %q", p.Alias, p.Err, w)
			}
		}
	}
	// ok's child only.
	if pids := ts.srv.Processes(); len(pids) != 1 {
		t.Errorf("server runs %v, want ok's child only", pids)
	}
	// Nothing listens on the shared address.
	if c, err := net.DialTimeout("tcp", shared.String(), time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on %s", shared)
	}
}

// The declarations: Indirect (known names and the configuration's) and
// OuterListens lines and flags; a server reads OuterListens, a client skips
// it; an OuterListens naming no chain is a configuration error.
func TestServerConfigOuterListens(t *testing.T) {
	const text = "Indirect dnstt\nOuterListens o obfs4\nAlias o obfs3|obfs4\nServerTransportPlugin obfs3,obfs4 builtin\n"
	srv, err := Parse(strings.NewReader(text), "conf", ServerRole)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(srv.OuterListens, ",") != "o,obfs4" {
		t.Errorf("server OuterListens %q", srv.OuterListens)
	}
	if err := srv.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	cli, err := Parse(strings.NewReader(text), "conf", ClientRole)
	if err != nil || len(cli.OuterListens) != 0 {
		t.Errorf("client read OuterListens %q (%v)", cli.OuterListens, err)
	}
	for ch, want := range map[string]bool{"o": true, "obfs3": false, "m=obfs4|meek": true, "s=snowflake": true,
		"w=obfs4|webtunnel": true, "d=obfs4|dnstt": true, "i=meek|obfs4": false} {
		c, ok := srv.Lookup(ch)
		if !ok {
			alias, spec, _ := strings.Cut(ch, "=")
			hops, _ := ParseChain(spec)
			c = Chain{Alias: alias, Hops: hops}
		}
		if got := srv.OutermostListens(c); got != want {
			t.Errorf("OutermostListens(%s) = %v, want %v", ch, got, want)
		}
	}
	var c Config
	if err := c.AddOuterListensFlag("a,b"); err != nil || strings.Join(c.OuterListens, ",") != "a,b" {
		t.Errorf("--outer-listens a,b: %q %v", c.OuterListens, err)
	}
	if err := c.AddOuterListensFlag("a-b"); err == nil {
		t.Error("--outer-listens a-b accepted")
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `OuterListens "a"`) {
		t.Errorf("Validate with OuterListens of no chain: %v", err)
	}
	if _, err := Parse(strings.NewReader("OuterListens\n"), "conf", ServerRole); err == nil {
		t.Error("an empty OuterListens line was accepted")
	}
}
