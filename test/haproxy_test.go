package test

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// haproxySource is the address HAProxy connects to ptcombiner-server from
// (its "source"), the one address --proxy-protocol trusts; the test's own
// connections come from 127.0.0.1, a source that is not trusted.
const haproxySource = "127.0.0.2"

// startHAProxy runs Debian's haproxy in the foreground (-db) as a child of
// the test, with a generated config in a temporary directory: for each
// server option ("send-proxy", "send-proxy-v2") a frontend on a free
// loopback port whose one backend server is backend, reached from
// haproxySource and health-checked every 200 ms (a TCP connect and close).
// It returns the frontends' addresses, by option.
func startHAProxy(t *testing.T, backend string, options ...string) map[string]string {
	t.Helper()
	haproxy := haproxyPath(t)
	cfg := []string{"global", "    maxconn 4096", "defaults", "    mode tcp",
		"    timeout connect 10s", "    timeout client 10m", "    timeout server 10m"}
	fronts := map[string]string{}
	for i, opt := range options {
		fronts[opt] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		cfg = append(cfg, fmt.Sprintf("frontend f%d", i), "    bind "+fronts[opt], fmt.Sprintf("    default_backend b%d", i),
			fmt.Sprintf("backend b%d", i), fmt.Sprintf("    server ptcombiner %s %s source %s check inter 200ms", backend, opt, haproxySource))
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(strings.Join(cfg, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	cmd := exec.Command(haproxy, "-f", path, "-db")
	out, _ := os.Create(filepath.Join(dir, "haproxy.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(eventCeiling):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "haproxy.log"))
			t.Logf("haproxy:\n%s", tail(string(b), 20))
		}
	})
	for _, addr := range fronts {
		waitFor(t, "haproxy to listen on "+addr, eventCeiling, func() bool {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	return fronts
}

// haproxyPath is Debian's haproxy, which lives in /usr/sbin, a directory
// not every user's PATH has.
func haproxyPath(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
			return "/usr/sbin/haproxy"
		}
	}
	return requireProgram(t, "haproxy")
}

// forgedRefused connects to addr from an untrusted source, sends a PROXY
// header naming 203.0.113.99 and then the chain's bytes (header), and
// reports whether the server closed the connection without a byte in
// reply.
func forgedRefused(t *testing.T, addr string, proxyHeader, header string) bool {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(proxyHeader + header))
	c.SetReadDeadline(time.Now().Add(eventCeiling))
	n, err := io.ReadAll(c)
	return len(n) == 0 && !os.IsTimeout(err)
}

const (
	forgedV1 = "PROXY TCP4 203.0.113.99 127.0.0.1 4444 443\r\n"
	forgedV2 = "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x63\x7f\x00\x00\x01\x11\x5c\x01\xbb" // 203.0.113.99:4444
)

// Without tor: real HAProxy in front of ptcombiner-server run standalone
// with --tor-extorport and --proxy-protocol 127.0.0.2, once with
// send-proxy (v1) and once with send-proxy-v2. The stand-in for tor checks
// that every stream's USERADDR is the client's own socket towards HAProxy
// (the stream's first line names it); a forged header sent straight to
// ptcombiner-server from 127.0.0.1 is refused, and so is a connection from
// HAProxy's address without one; HAProxy's health checks, every 200 ms,
// leave nothing above debug in ptcombiner-server's log.
func TestHAProxyProxyProtocol(t *testing.T) {
	ft := startFakeTor(t, "t1")
	public := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logFile := filepath.Join(t.TempDir(), "server.log")
	startStandalone(t, 1, bin("ptcombiner-server"), "--plugin", "test="+bin("testpt"), "--chain", "t1=test",
		"--listen", "t1="+public, "--tor-extorport", ft.addr+"="+ft.cookiePath, "--state-dir", t.TempDir(),
		"--config", writeConfig(t, "ServerTransportOptions t1 key=7\nProxyProtocol "+haproxySource+"\n"),
		"--log-level", "debug", "--log-file", logFile)
	fronts := startHAProxy(t, public, "send-proxy", "send-proxy-v2")
	wrap := func(c *net.TCPConn) (io.ReadWriter, error) { return newTestptStream(c, []byte{7}) }
	streams := 0
	for _, opt := range []string{"send-proxy", "send-proxy-v2"} {
		if failed := runLoad(100, 10, func(int) error { return oneAttributed(fronts[opt], wrap, 4096) }); len(failed) > 0 {
			t.Errorf("%s: %d connections failed, the first: %s", opt, len(failed), failed[0])
		}
		streams += 100
	}

	for _, forged := range []string{forgedV1, forgedV2} {
		if !forgedRefused(t, public, forged, "TESTPT1 test 7\n") {
			t.Errorf("a forged header %q from 127.0.0.1 was not refused", forged[:5])
		}
	}
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(haproxySource)}}).Dial("tcp", public)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("TESTPT1 test 7\n"))
	c.SetReadDeadline(time.Now().Add(eventCeiling))
	if b, err := io.ReadAll(c); len(b) > 0 || os.IsTimeout(err) {
		t.Error("a connection from HAProxy's address without a header was not refused")
	}
	c.Close()
	ft.check(t, streams)

	// The refusals above are the only lines above debug; the health checks
	// (one every 200 ms, from each backend server) are at debug.
	waitFor(t, "health checks in the log", eventCeiling, func() bool {
		return len(findLines(logFile, "a health check")) >= 2
	})
	var above []string
	for _, l := range findLines(logFile, "level=") {
		if !strings.Contains(l, "level=DEBUG") && strings.Contains(l, "refused a connection") {
			above = append(above, l)
		}
	}
	if len(above) != 3 {
		t.Errorf("want 3 refusals above debug (two forged headers, one without a header), got:\n%s", strings.Join(above, "\n"))
	}
	t.Logf("%d health checks logged at debug", len(findLines(logFile, "a health check")))
}

// In the private Tor network, HAProxy (send-proxy-v2) in front of the
// bridge's ptcombiner-server, which tor runs with --proxy-protocol
// 127.0.0.2: the client's Bridge line names HAProxy's address; it
// bootstraps to 100% and fetches a page and a 2 MiB blob; the bridge's tor
// hears as USERADDR the client's own socket towards HAProxy, never
// HAProxy's; a forged header sent straight to ptcombiner-server is refused
// and tor never hears the address it names.
func TestPrivateTorNetworkHAProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a private Tor network")
	}
	haproxyPath(t)
	const alias = "obfs4"
	start := time.Now()
	pn := startPrivNet(t)
	pub := freePort(t)
	debugLog := filepath.Join(t.TempDir(), "bridge-debug.log")
	serverLog := filepath.Join(t.TempDir(), "server.log")
	bridge := startTor(t, "bridge", append([]string{"Nickname bridge", "BridgeRelay 1", "PublishServerDescriptor 0",
		fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)), fmt.Sprintf("ExtORPort 127.0.0.1:%d", freePort(t)),
		"ExitPolicy reject *:*",
		fmt.Sprintf("ServerTransportPlugin %s exec %s --builtin obfs4 --proxy-protocol %s --log-level debug --log-file %s",
			alias, bin("ptcombiner-server"), haproxySource, serverLog),
		fmt.Sprintf("ServerTransportListenAddr %s 127.0.0.1:%d", alias, pub),
		"Log [net,general]debug file " + debugLog}, pn.relay...)...)
	published := bridgeLine(t, bridge.waitFile(t, "bridgelines", eventCeiling), alias)
	front := startHAProxy(t, fmt.Sprintf("127.0.0.1:%d", pub), "send-proxy-v2")["send-proxy-v2"]
	pn.waitBridgeKnowsRelays(t, bridge)
	t.Logf("network ready after %v", time.Since(start).Round(time.Second))

	f := strings.Fields(published)
	f[2] = front // the client reaches the bridge through HAProxy
	socksPort := freePort(t)
	client := startTor(t, "client", append([]string{"UseBridges 1", strings.Join(f, " "), "ConfluxEnabled 0",
		fmt.Sprintf("ClientTransportPlugin %s exec %s --builtin obfs4", alias, bin("ptcombiner-client")),
		fmt.Sprintf("SocksPort 127.0.0.1:%d", socksPort)}, pn.common...)...)
	client.waitLog(t, "Bootstrapped 100% (done)", 150*time.Second)
	pn.fetchAll(t, socksPort, newRetryBudget(t, "a fetch through tor that failed", 0.5))

	_, frontPort, _ := net.SplitHostPort(front)
	var port int
	fmt.Sscan(frontPort, &port)
	truth := establishedTo(t, port)
	if len(truth) == 0 {
		t.Fatal("no established connection to HAProxy")
	}
	seen := findLines(debugLog, "Received USERADDR")
	found := false
	for _, l := range seen {
		for _, a := range truth {
			found = found || strings.Contains(l, "to '"+a+"'")
		}
		if strings.Contains(l, "to '"+haproxySource+":") {
			t.Errorf("the bridge's tor heard HAProxy's own address: %s", l)
		}
	}
	if !found {
		t.Errorf("no USERADDR line names the client's socket towards HAProxy %v:\n%s", truth, strings.Join(seen, "\n"))
	}
	if findLine(debugLog, "with transport '"+alias+"'") == "" {
		t.Errorf("the bridge's tor never saw transport %q", alias)
	}

	if !forgedRefused(t, fmt.Sprintf("127.0.0.1:%d", pub), forgedV2, strings.Repeat("\x42", 100)) {
		t.Error("a forged v2 header from 127.0.0.1 was not refused")
	}
	if err := waitFile(serverLog, eventCeiling, "it sends a PROXY header, but its source is not one that --proxy-protocol trusts"); err != nil {
		t.Error(err)
	}
	for _, l := range findLines(debugLog, "Received USERADDR") {
		if strings.Contains(l, "203.0.113.99") {
			t.Errorf("the bridge's tor heard the forged address: %s", l)
		}
	}
	for _, l := range findLines(serverLog, "level=WARN") {
		if !strings.Contains(l, "it sends a PROXY header") {
			t.Errorf("ptcombiner-server warned: %s", l)
		}
	}
	checkLoopbackOnly(t)
	t.Logf("client-side sockets towards HAProxy %v; %d USERADDR lines; %d health checks at debug; wall time %v", truth, len(seen),
		len(findLines(serverLog, "a health check")), time.Since(start).Round(time.Second))
}

// waitFile waits for a line of the file at path that contains s.
func waitFile(path string, d time.Duration, s string) error {
	deadline := time.Now().Add(d)
	for findLine(path, s) == "" {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s has no line with %q after %v", filepath.Base(path), s, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
