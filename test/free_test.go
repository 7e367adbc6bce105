package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xtaci/smux"
	"golang.org/x/net/proxy"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/free"
	"github.com/ptcombiner/ptcombiner/internal/freetest"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
)

// freeRig is ptcombiner-server --free and ptcombiner-client --proxy
// joined by a chain, with a relay in front of the bridge that counts the
// connections the bridge accepts.
type freeRig struct {
	proxy    string        // the client's SOCKS5 address
	accepted *atomic.Int64 // chained connections the bridge accepted
	srvLog   *syncBuffer   // ptcombiner-server's log
	cliLog   *syncBuffer   // ptcombiner-client's log
	alias    string
	bridge   string        // what the client dials (the relay)
	args     metadata.Args // the chain's arguments, as the server published them

	srvArgs  []string
	srv, cli *exec.Cmd
	upstream *atomic.Pointer[string] // where the relay goes: the server's public address
}

// freeSetup is one way to run a chain alias on both sides.
type freeSetup struct {
	name           string
	alias, chain   string
	server, client []string // each program's hop flags (--plugin, --builtin)
	config         string   // the server's config file, if any
	obfs4proxy     bool     // needs obfs4proxy: skipped without it
}

// startFree starts the server with srvFlags (its --allow and --deny) and
// the client with cliFlags beside the setup's.
func startFree(t *testing.T, s freeSetup, srvFlags, cliFlags []string) *freeRig {
	t.Helper()
	if s.obfs4proxy {
		requireProgram(t, "obfs4proxy")
	}
	args := append(append([]string{}, s.server...), "--chain", s.alias+"="+s.chain, "--listen", s.alias+"=127.0.0.1:0",
		"--free", "--state-dir", t.TempDir())
	if s.config != "" {
		args = append(args, "--config", writeConfig(t, s.config))
	}
	srvArgs := append(args, srvFlags...)
	lines, srvLog, srv := launchStandalone(t, 1, bin("ptcombiner-server"), srvArgs...)
	f := strings.Fields(lines[0]) // CHAIN alias addr ARGS args
	if len(f) != 5 || f[0] != "CHAIN" {
		t.Fatalf("server printed %q", lines[0])
	}
	chainArgs, err := metadata.ParseClientArgs(f[4])
	if err != nil {
		t.Fatal(err)
	}
	relay, accepted, upstream := countingRelay(t, f[2])
	args = append(append([]string{}, s.client...), "--chain", s.alias+"="+s.chain,
		"--proxy", "127.0.0.1:0="+s.alias+"@"+relay, "--args", s.alias+"="+f[4])
	lines, cliLog, cli := launchStandalone(t, 1, bin("ptcombiner-client"), append(args, cliFlags...)...)
	p := strings.Fields(lines[0]) // PROXY alias addr -> bridge
	if len(p) != 5 || p[0] != "PROXY" {
		t.Fatalf("client printed %q", lines[0])
	}
	r := &freeRig{proxy: p[2], accepted: accepted, srvLog: srvLog, cliLog: cliLog, alias: s.alias, bridge: relay,
		args: chainArgs, srvArgs: srvArgs, srv: srv, cli: cli, upstream: upstream}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ptcombiner-server log:\n%s\nptcombiner-client log:\n%s", tail(r.srvLog.String(), 30), tail(r.cliLog.String(), 30))
		}
	})
	return r
}

// countingRelay listens on loopback, counts every connection it accepts,
// and pipes each to upstream, which the caller may move.
func countingRelay(t *testing.T, upstream string) (string, *atomic.Int64, *atomic.Pointer[string]) {
	t.Helper()
	var n atomic.Int64
	var to atomic.Pointer[string]
	to.Store(&upstream)
	addr := serveLoopback(t, func(c *net.TCPConn) {
		n.Add(1)
		up, err := net.Dial("tcp", *to.Load())
		if err != nil {
			return
		}
		shim.Pipe(context.Background(), c, up)
	})
	return addr, &n, &to
}

// The setups of a chain, one per hop kind: PT programs, in-process
// transports, and the two mixed in one chain on both sides.
func freeSetups() map[string]freeSetup {
	obfs4proxy, _ := exec.LookPath("obfs4proxy") // startFree skips the setups that need it when it is missing
	testpt := "test=" + bin("testpt")
	return map[string]freeSetup{
		"obfs4proxy": {name: "obfs4proxy obfs4|obfs4", alias: "o4o4", chain: "obfs4|obfs4",
			server: []string{"--plugin", "obfs4=" + obfs4proxy}, client: []string{"--plugin", "obfs4=" + obfs4proxy}, obfs4proxy: true},
		"testpt": {name: "test PT test|test", alias: "t2", chain: "test|test",
			server: []string{"--plugin", testpt}, client: []string{"--plugin", testpt},
			config: "ServerTransportOptions t2 0.key=5 1.key=6\n"},
		"builtin": {name: "in-process obfs4|obfs4", alias: "b4b4", chain: "obfs4|obfs4",
			server: []string{"--builtin", "obfs4"}, client: []string{"--builtin", "obfs4"}},
		// test is a program on both sides; obfs4 in process on the client,
		// obfs4proxy on the bridge.
		"mixed": {name: "mixed test|obfs4", alias: "mix", chain: "test|obfs4",
			server: []string{"--plugin", testpt, "--plugin", "obfs4=" + obfs4proxy}, client: []string{"--plugin", testpt, "--builtin", "obfs4"},
			config: "ServerTransportOptions mix 0.key=9\n", obfs4proxy: true},
	}
}

// fetchSize is the body size of fetch i: 1 byte to about 200 KiB.
func fetchSize(i int) int { return 1 + i*7919%200000 }

// Acceptance 1, with a Go client: 200 HTTP fetches at 50 at once from
// three loopback HTTP servers through --proxy, byte-exact, all over one
// chained connection, for every hop kind; then a DNS query over UDP.
func TestFreeHTTPGo(t *testing.T) {
	setups := freeSetups()
	for _, key := range []string{"testpt", "obfs4proxy", "builtin", "mixed"} {
		s := setups[key]
		t.Run(s.name, func(t *testing.T) {
			r := startFree(t, s, []string{"--allow", "127.0.0.0/8"}, nil)
			servers, served := freetest.HTTPServers(t, 3)
			d, err := proxy.SOCKS5("tcp", r.proxy, nil, proxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			tr := &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: eventCeiling}
			errs := freetest.Load(200, 50, func(i int) error {
				host := servers[i%3]
				if i%2 == 1 { // by name, resolved on the bridge
					host = strings.Replace(host, "127.0.0.1", "localhost", 1)
				}
				resp, err := client.Get(fmt.Sprintf("http://%s/%d", host, fetchSize(i)))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					return err
				}
				return freetest.Check(body, fetchSize(i))
			})
			if len(errs) > 0 {
				t.Fatalf("%d of 200 fetches failed; first: %v", len(errs), errs[:min(3, len(errs))])
			}
			if n := served.Load(); n != 200 {
				t.Errorf("the HTTP servers served %d requests, want 200", n)
			}
			checkDNS(t, r)
			if n := r.accepted.Load(); n != 1 {
				t.Errorf("the bridge accepted %d chained connections, want 1", n)
			}
			if n := strings.Count(r.srvLog.String(), "free session opened"); n != 1 {
				t.Errorf("the bridge opened %d sessions, want 1", n)
			}
		})
	}
}

// checkDNS asks a loopback DNS server for a name through UDP ASSOCIATE.
func checkDNS(t *testing.T, r *freeRig) {
	t.Helper()
	dns := freetest.DNSServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	u, err := freetest.Associate(ctx, t, r.proxy, nil, nil)
	if err != nil {
		t.Fatalf("UDP ASSOCIATE: %v", err)
	}
	defer u.Close()
	a, err := u.Lookup(shim.AddrFrom(dns), "example.com.", eventCeiling)
	if err != nil || a != freetest.DNSAnswer {
		t.Fatalf("DNS through the proxy: %v, %v; want %v", a, err, freetest.DNSAnswer)
	}
}

// Acceptance 1, with curl --socks5-hostname over real obfs4proxy
// obfs4|obfs4: 200 fetches at 50 at once, byte-exact, one chained
// connection.
func TestFreeHTTPCurl(t *testing.T) {
	curl := requireProgram(t, "curl")
	r := startFree(t, freeSetups()["obfs4proxy"], []string{"--allow", "127.0.0.0/8"}, nil)
	servers, served := freetest.HTTPServers(t, 3)
	errs := freetest.Load(200, 50, func(i int) error {
		_, port, _ := net.SplitHostPort(servers[i%3])
		url := fmt.Sprintf("http://localhost:%s/%d", port, fetchSize(i))
		out, err := exec.Command(curl, "--silent", "--show-error", "--fail", "--max-time", "60",
			"--socks5-hostname", r.proxy, url).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return fmt.Errorf("curl %s: %v: %s", url, err, ee.Stderr)
			}
			return err
		}
		return freetest.Check(out, fetchSize(i))
	})
	if len(errs) > 0 {
		t.Fatalf("%d of 200 fetches failed; first: %v", len(errs), errs[:min(3, len(errs))])
	}
	if n := served.Load(); n != 200 {
		t.Errorf("the HTTP servers served %d requests, want 200", n)
	}
	if n := r.accepted.Load(); n != 1 {
		t.Errorf("the bridge accepted %d chained connections, want 1", n)
	}
}

// Acceptance 2: 10,000 datagrams of 1 to 1400 bytes through UDP
// ASSOCIATE to a loopback echo server come back byte-exact and in order;
// two associations at once keep their own order; DNS answers, to an
// address and to a name resolved on the bridge.
func TestFreeUDP(t *testing.T) {
	r := startFree(t, freeSetups()["testpt"], []string{"--allow", "127.0.0.0/8"}, nil)
	echo := freetest.UDPEcho(t)
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	errs := freetest.Load(2, 2, func(i int) error {
		u, err := freetest.Associate(ctx, t, r.proxy, nil, nil)
		if err != nil {
			return err
		}
		defer u.Close()
		n := 10000
		if i == 1 {
			n = 2000 // beside the first
		}
		return u.Exchange(echo, n, 32, eventCeiling)
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	dns := freetest.DNSServer(t)
	u, err := freetest.Associate(ctx, t, r.proxy, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, server := range []shim.Addr{shim.AddrFrom(dns), {Name: "localhost", Port: dns.Port()}} {
		if a, err := u.Lookup(server, "example.net.", eventCeiling); err != nil || a != freetest.DNSAnswer {
			t.Errorf("DNS to %v: %v, %v", server, a, err)
		}
	}
	if n := r.accepted.Load(); n != 1 {
		t.Errorf("the bridge accepted %d chained connections, want 1", n)
	}
}

// Acceptance 3: the default policy refuses loopback and 10.0.0.0/8 with
// SOCKS reply 0x02 and a log line (on the client, which refuses an IP
// address by the policy the bridge advertised, or, for a name or with
// --proxy-wait, on the bridge); --allow 127.0.0.0/8 opens loopback only;
// --deny closes what it names.
func TestFreePolicy(t *testing.T) {
	echo := echoServer(t)
	_, echoPort, _ := net.SplitHostPort(echo)
	s := freeSetups()["testpt"]
	for _, tc := range []struct {
		name     string
		flags    []string
		dest     string
		refused  bool
		cliFlags []string
	}{
		{"default: 127.0.0.1", nil, echo, true, nil},
		{"default: localhost", nil, "localhost:" + echoPort, true, nil},
		{"default: 10.0.0.0/8", nil, "10.1.2.3:80", true, nil},
		{"default, --proxy-wait: 127.0.0.1", nil, echo, true, []string{"--proxy-wait"}},
		{"--allow 127.0.0.0/8: 127.0.0.1", []string{"--allow", "127.0.0.0/8"}, echo, false, nil},
		{"--allow 127.0.0.0/8: 10.0.0.0/8", []string{"--allow", "127.0.0.0/8"}, "10.1.2.3:80", true, nil},
		{"--allow 127.0.0.0/8 --deny the port", []string{"--allow", "127.0.0.0/8", "--deny", "127.0.0.1:" + echoPort}, echo, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startFree(t, s, tc.flags, tc.cliFlags)
			ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
			defer cancel()
			conn, err := shim.DialSOCKS5(ctx, r.proxy, tc.dest, nil, nil)
			if !tc.refused {
				if err != nil {
					t.Fatalf("CONNECT %s: %v", tc.dest, err)
				}
				if err := roundTrip(t, conn, 1<<16); err != nil {
					t.Fatal(err)
				}
				return
			}
			var re *shim.ReplyError
			if !errors.As(err, &re) || re.Code != shim.RepNotAllowed {
				t.Fatalf("CONNECT %s: %v, want SOCKS reply 0x02", tc.dest, err)
			}
			// The bridge judges a name, and every destination with
			// --proxy-wait; the client an IP address, by the policy the
			// bridge advertised, and the bridge hears nothing of it.
			where, log := "the client's", r.cliLog
			if strings.HasPrefix(tc.dest, "localhost") || len(tc.cliFlags) > 0 {
				where, log = "the bridge's", r.srvLog
			}
			waitFor(t, where+" log line", eventCeiling, func() bool {
				return strings.Contains(log.String(), "destination refused by policy")
			})
		})
	}
}

// Acceptance 3: a malformed stream header closes that stream only; the
// session, a stream open beside it, and new streams go on. The streams
// are written by hand on the chained connection the client's --proxy
// keeps, so the check is the bridge's.
func TestFreeMalformedHeader(t *testing.T) {
	r := startFree(t, freeSetups()["testpt"], []string{"--allow", "127.0.0.0/8"}, nil)
	echo := echoServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	beside, err := shim.DialSOCKS5(ctx, r.proxy, echo, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer beside.Close()
	mux := rawSession(t, r)
	for _, bad := range [][]byte{{9, 1}, {1, 7}, {1, 1, 3, 0, 0, 80}, {1, 1, 3, 1, '%', 0, 80}} {
		st, err := mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		st.Write(bad)
		st.SetReadDeadline(time.Now().Add(eventCeiling))
		got, err := io.ReadAll(st)
		st.Close()
		if err != nil || len(got) > 2 {
			t.Errorf("stream header % x: the bridge answered % x, %v; want at most a reply, then the stream's end", bad, got, err)
		}
	}
	if !rawConnect(t, mux, echo) {
		t.Error("a good stream after the malformed ones, on the same session, failed")
	}
	if err := freetest.Echo(beside, eventCeiling, "the stream beside"); err != nil {
		t.Errorf("the stream beside: %v", err)
	}
	if c, err := shim.DialSOCKS5(ctx, r.proxy, echo, nil, nil); err != nil {
		t.Errorf("a new stream through the proxy: %v", err)
	} else {
		c.Close()
	}
	if n := strings.Count(r.srvLog.String(), "malformed stream header"); n != 4 {
		t.Errorf("%d log lines for malformed headers, want 4", n)
	}
}

// With --proxy-auth, only the file's users get through.
func TestFreeProxyAuth(t *testing.T) {
	curl := requireProgram(t, "curl")
	auth := filepath.Join(t.TempDir(), "users")
	writeFile(t, auth, "# who may use the proxy\nalice:s3cr:et\n\nbob:hunter2\n")
	r := startFree(t, freeSetups()["testpt"], []string{"--allow", "127.0.0.0/8"}, []string{"--proxy-auth", auth})
	servers, _ := freetest.HTTPServers(t, 1)
	url := "http://" + servers[0] + "/1000"
	for _, tc := range []struct {
		user string
		ok   bool
	}{{"alice:s3cr:et", true}, {"bob:hunter2", true}, {"bob:hunter3", false}, {"carol:s3cr:et", false}, {"", false}} {
		args := []string{"--silent", "--fail", "--max-time", "60", "--socks5-hostname", r.proxy, url}
		if tc.user != "" {
			args = append(args, "--proxy-user", tc.user)
		}
		out, err := exec.Command(curl, args...).Output()
		if tc.ok && (err != nil || freetest.Check(out, 1000) != nil) {
			t.Errorf("%q: %v", tc.user, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%q got through", tc.user)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	if _, err := freetest.Associate(ctx, t, r.proxy, []byte("bob"), []byte("hunter2")); err != nil {
		t.Errorf("UDP ASSOCIATE as bob: %v", err)
	}
	if _, err := freetest.Associate(ctx, t, r.proxy, nil, nil); err == nil {
		t.Error("UDP ASSOCIATE without credentials got through")
	}
}

// rawSession opens a session of the bridge's by hand: a chained
// connection through the rig's chain (package chain, as --proxy dials
// it), and smux protocol version 2 over it, as docs/free.md says.
func rawSession(t *testing.T, r *freeRig) *smux.Session {
	t.Helper()
	cfg := &chain.Config{}
	for _, f := range []func() error{
		func() error { return cfg.AddPluginFlag("test=" + bin("testpt")) },
		func() error { return cfg.AddChainFlag(r.alias + "=test|test") },
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	client := chain.NewClient(chain.ClientOptions{Config: cfg, StateDir: t.TempDir(), Logger: testLogger(t)})
	t.Cleanup(func() { client.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	if err := client.Start(ctx, []string{r.alias})[r.alias]; err != nil {
		t.Fatal(err)
	}
	conn, err := client.Dial(ctx, r.alias, r.bridge, r.args)
	if err != nil {
		t.Fatal(err)
	}
	mc := smux.DefaultConfig()
	mc.Version = 2
	mux, err := smux.Client(conn, mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mux.Close() })
	return mux
}

// rawConnect opens a stream to dest on mux by hand and echoes through it.
func rawConnect(t *testing.T, mux *smux.Session, dest string) bool {
	t.Helper()
	a, err := shim.ParseAddr(dest)
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := free.AppendHeader(nil, free.Header{Command: free.Connect, Dest: a})
	if err != nil {
		t.Fatal(err)
	}
	st, err := mux.OpenStream()
	if err != nil {
		t.Log(err)
		return false
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(eventCeiling))
	st.Write(hdr)
	reply := make([]byte, 2)
	if _, err := io.ReadFull(st, reply); err != nil || reply[0] != 1 || reply[1] != 0 {
		t.Logf("reply % x, %v", reply, err)
		return false
	}
	if err := freetest.Echo(st, eventCeiling, "by hand"); err != nil {
		t.Log(err)
		return false
	}
	return true
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
