package test

// obfs4 inside snowflake through both combiners, on a private Tor network
// (privnet_test.go), offline. The client's ptcombiner-client runs obfs4proxy
// and Debian's snowflake-client; the bridge's ptcombiner-server runs
// obfs4proxy and snowflake-server, which owns the chain's public address (a
// WebSocket server); snowflake-proxy and the broker (the broker and the
// server built from snowflake v2.5.1's module) carry the client's WebRTC
// data channel to it, and a STUN server of the project's own (test/stun)
// tells the client its NAT is "unrestricted", without which the broker
// pairs it with no proxy.
//
// WebRTC gathers no loopback candidates, so the whole network runs in a
// private network namespace (unshare -n) whose only other interface is a
// veth pair with one address, nsAddr: the test re-executes itself there.
// Nothing inside can reach anything outside, and no process may be left in
// it when the test ends (then the namespace is gone too).

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/test/stun"
)

const (
	// snowflakeModule is the version the test builds the server and the
	// broker from; Debian's snowflake-client and snowflake-proxy are the
	// same release.
	snowflakeModule = "git.torproject.org/pluggable-transports/snowflake.git/v2@v2.5.1"
	// Environment of the run inside the namespace: the network namespace
	// it was started from, and where that run built snowflake's binaries.
	netnsEnv     = "PTCOMBINER_TEST_NETNS"
	snowflakeEnv = "PTCOMBINER_TEST_SNOWFLAKE_BIN"
)

// nsAddr is the namespace's one address that is not loopback, on sf0 (its
// veth peer sf1 has none): a TEST-NET-1 address (RFC 5737), which
// snowflake-proxy reports to the server as the client's (it skips private
// and loopback addresses), so the bridge must see USERADDR nsAddr:1.
var nsAddr = net.IPv4(192, 0, 2, 1)

func TestPrivateTorNetworkSnowflake(t *testing.T) {
	if os.Getenv(netnsEnv) != "" {
		snowflakeInNamespace(t)
		return
	}
	if testing.Short() {
		t.Skip("builds a private Tor network")
	}
	for _, p := range []string{"tor", "tor-gencert", "obfs4proxy", "snowflake-client", "snowflake-proxy", "ip", "unshare", "go"} {
		requireProgram(t, p)
	}
	if os.Geteuid() != 0 {
		t.Skip("a private network namespace needs root (unshare -n, ip link add)")
	}
	if out, err := exec.Command("unshare", "-n", "true").CombinedOutput(); err != nil {
		t.Skipf("this machine refuses a private network namespace: unshare -n: %v %s", err, out)
	}
	sfBin := buildSnowflake(t)

	// The same test, inside a new network namespace.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-n", "--", self, "-test.run", "^" + t.Name() + "$", "-test.v", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).Truncate(time.Second).String())
	}
	cmd := exec.Command("unshare", args...)
	outer, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Skipf("no network namespace to compare with: %v", err)
	}
	cmd.Env = append(os.Environ(), netnsEnv+"="+outer, snowflakeEnv+"="+sfBin, binEnv+"="+binDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var skip string
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		t.Log("ns| " + line)
		if strings.Contains(line, "--- SKIP: "+t.Name()) {
			skip = line
		}
	}
	io.Copy(io.Discard, out) // a line too long for the scanner
	err = cmd.Wait()
	switch {
	case err != nil:
		t.Fatalf("the run inside the namespace failed: %v", err)
	case skip != "":
		t.Skip("inside the namespace: " + skip)
	}
}

// buildSnowflake builds snowflake's server and broker into a temporary
// directory, from the Go module proxy (or the module cache), in a module
// of their own: the project's go.mod does not grow their dependencies.
// This Go refuses the server's linkname use unless told not to check.
func buildSnowflake(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	mod, version, _ := strings.Cut(snowflakeModule, "@")
	gomod := fmt.Sprintf("module ptcombiner-test-snowflake\n\ngo 1.21\n\nrequire %s %s\n", mod, version)
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("go", "build", "-ldflags=-checklinkname=0", "-o", dir+"/", mod+"/server", mod+"/broker")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("building snowflake's server and broker %s: %v\n%s", version, err, out)
		}
		t.Skipf("cannot build snowflake's server and broker %s (the Go module proxy is needed once): %v\n%s", version, err, out)
	}
	t.Logf("built snowflake-server and the broker %s in %v", version, time.Since(start).Round(100*time.Millisecond))
	return dir
}

// othersIn lists the processes but this one whose network namespace is ns.
func othersIn(ns string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); l == ns && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func progNamesOf(pids []int) []string {
	var names []string
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		argv0, _, _ := strings.Cut(string(b), "\x00")
		names = append(names, fmt.Sprintf("%d %s", p, filepath.Base(argv0)))
	}
	return names
}

// setupNamespace brings up lo and the veth pair with nsAddr, after
// checking that this process is not in the namespace the test was started
// from: the interfaces must never land there.
func setupNamespace(t *testing.T) string {
	t.Helper()
	self, _ := os.Readlink("/proc/self/ns/net")
	if outer := os.Getenv(netnsEnv); self == "" || self == outer {
		t.Fatalf("not in a private network namespace (mine %q, the outer run's %q)", self, outer)
	}
	// addrgenmode none: no IPv6 link-local address, which snowflake-proxy
	// would take for the client's address.
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "sf0", "type", "veth", "peer", "name", "sf1"},
		{"link", "set", "sf0", "addrgenmode", "none"},
		{"link", "set", "sf1", "addrgenmode", "none"},
		{"addr", "add", nsAddr.String() + "/24", "dev", "sf0"},
		{"link", "set", "sf0", "up"},
		{"link", "set", "sf1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, _ := exec.Command("ip", "-brief", "address").CombinedOutput()
	t.Logf("network namespace %s:\n%s", self, out)
	// The namespace ends with its last process, this one, so none other
	// may be left when the test ends (this cleanup runs after every other).
	// Whatever is in it was started here.
	t.Cleanup(func() {
		var left []int
		if _, ok := poll(eventCeiling, func() bool { left = othersIn(self); return len(left) == 0 }); !ok {
			t.Errorf("processes left in the network namespace: %v", progNamesOf(left))
			for _, p := range left {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	return self
}

// daemon is a program the test runs beside tor, its output in a file.
type daemon struct {
	name, log string
	cmd       *exec.Cmd
	done      chan struct{}
}

// startDaemon runs path with args until the test ends; it dies with the
// test process too.
func startDaemon(t *testing.T, name, path string, args ...string) *daemon {
	t.Helper()
	d := &daemon{name: name, log: filepath.Join(t.TempDir(), name+".log"), done: make(chan struct{})}
	f, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(path, args...)
	d.cmd.Stdout, d.cmd.Stderr = f, f
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); f.Close(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("%s log:\n%s", name, tail(string(b), 30))
		}
	})
	return d
}

func (d *daemon) stop() { stopChild(d.cmd, d.done) }

// snowflakeInNamespace is the test proper, inside the namespace.
func snowflakeInNamespace(t *testing.T) {
	start := time.Now()
	setupNamespace(t)
	sfBin := os.Getenv(snowflakeEnv)
	obfs4proxy := requireProgram(t, "obfs4proxy")
	sfClient := requireProgram(t, "snowflake-client")
	sfProxy := requireProgram(t, "snowflake-proxy")
	dir := t.TempDir()

	st, err := stun.Listen(nsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	network := startPrivNet(t)

	// The bridge: ptcombiner-server runs obfs4proxy inside snowflake-server,
	// which listens on the chain's public address for the proxies'
	// WebSocket connections.
	const alias, chain = "obfs4_snowflake", "obfs4|snowflake"
	wsPort := freePort(t)
	serverConf := writeConfig(t, strings.Join([]string{
		"ServerTransportPlugin obfs4 exec " + obfs4proxy,
		fmt.Sprintf("ServerTransportPlugin snowflake exec %s -disable-tls -log %s", filepath.Join(sfBin, "server"), filepath.Join(dir, "snowflake-server.log")),
		"Alias " + alias + " " + chain,
	}, "\n")+"\n")
	debugLog := filepath.Join(dir, "bridge-debug.log")
	bridgeDir, err := os.MkdirTemp("", "ptcombiner-tor-bridge-")
	if err != nil {
		t.Fatal(err)
	}
	bridgeOR := freePort(t)
	bridgeFP := relayFingerprint(t, bridgeDir, bridgeOR)
	bridge := startTorIn(t, "bridge", bridgeDir, append([]string{"Nickname bridge", "BridgeRelay 1", "PublishServerDescriptor 0",
		fmt.Sprintf("ORPort 127.0.0.1:%d", bridgeOR), fmt.Sprintf("ExtORPort 127.0.0.1:%d", freePort(t)), "ExitPolicy reject *:*",
		fmt.Sprintf("ServerTransportPlugin %s exec %s --config %s", alias, bin("ptcombiner-server"), serverConf),
		fmt.Sprintf("ServerTransportListenAddr %s 127.0.0.1:%d", alias, wsPort),
		"Log [net,general]debug file " + debugLog}, network.relay...)...)

	// The broker knows one bridge: this one, at its WebSocket address.
	brokerPort := freePort(t)
	bridgeList := filepath.Join(dir, "bridge-list.json")
	os.WriteFile(bridgeList, []byte(fmt.Sprintf(`{"displayName":"ptcombiner-test", "webSocketAddress":"ws://127.0.0.1:%d/", "fingerprint":"%s"}`+"\n", wsPort, bridgeFP)), 0o600)
	startDaemon(t, "broker", filepath.Join(sfBin, "broker"), "-addr", fmt.Sprintf("127.0.0.1:%d", brokerPort),
		"-disable-tls", "-disable-geoip", "-bridge-list-path", bridgeList, "-allowed-relay-pattern", "^127.0.0.1$",
		"-metrics-log", filepath.Join(dir, "broker-metrics.log"), "-unsafe-logging")
	brokerURL := fmt.Sprintf("http://127.0.0.1:%d/", brokerPort)
	stunURL := "stun:" + st.Addr().String()
	// The proxy's NAT probe (a fixed URL of the Tor Project's broker) fails
	// here at once: its NAT type stays "unknown", a proxy the broker gives
	// to unrestricted clients only.
	proxy := startDaemon(t, "snowflake-proxy", sfProxy, "-broker", brokerURL, "-stun", stunURL, "-keep-local-addresses",
		"-allow-non-tls-relay", "-allowed-relay-hostname-pattern", "127.0.0.1$", "-relay", fmt.Sprintf("ws://127.0.0.1:%d/", wsPort),
		"-nat-retest-interval", "0", "-unsafe-logging", "-verbose")
	waitFor(t, "the proxy to poll the broker", eventCeiling, func() bool {
		resp, err := http.Get(brokerURL + "debug")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "current snowflakes available: 1")
	})

	bridgelines := bridge.waitFile(t, "bridgelines", eventCeiling)
	network.waitBridgeKnowsRelays(t, bridge)
	t.Logf("network, broker and proxy ready after %v", time.Since(start).Round(time.Second))

	// The client: its Bridge line is the bridge's, with an address where
	// nothing but a counter listens (snowflake never dials it) and hop 1's
	// arguments for snowflake-client: the broker, the STUN server and the
	// bridge it asks the broker for.
	nowhere, dialed := countingListener(t)
	published := bridgeLine(t, bridgelines, alias)
	if !strings.Contains(published, fmt.Sprintf(" 127.0.0.1:%d ", wsPort)) || !strings.Contains(published, " 0.cert=") {
		t.Fatalf("the published line is not snowflake-server's address with obfs4's hop 0 args: %s", published)
	}
	f := strings.Fields(published)
	line := strings.Join(append([]string{"Bridge", alias, nowhere, f[3]}, append(f[4:],
		"1.url="+brokerURL, "1.ice="+stunURL, "1.fingerprint="+bridgeFP)...), " ")
	t.Logf("client's %s", line)
	clientConf := writeConfig(t, strings.Join([]string{
		"ClientTransportPlugin obfs4 exec " + obfs4proxy,
		fmt.Sprintf("ClientTransportPlugin snowflake exec %s -keep-local-addresses -unsafe-logging -log %s", sfClient, filepath.Join(dir, "snowflake-client.log")),
		"Alias " + alias + " " + chain,
	}, "\n")+"\n")
	socksPort := freePort(t)
	clientStart := time.Now()
	client := startTor(t, "client", append([]string{"UseBridges 1", line, "ConfluxEnabled 0",
		fmt.Sprintf("ClientTransportPlugin %s exec %s --config %s", alias, bin("ptcombiner-client"), clientConf),
		fmt.Sprintf("SocksPort 127.0.0.1:%d", socksPort)}, network.common...)...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"snowflake-client.log", "snowflake-server.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, name))
				t.Logf("%s:\n%s", name, tail(string(b), 30))
			}
		}
	})
	client.waitLog(t, "Bootstrapped 100% (done)", 150*time.Second)
	toFull := time.Since(clientStart)
	t.Logf("%s: bootstrapped to 100%% in %v; snowflake-client's %q", alias, toFull.Round(100*time.Millisecond),
		findLine(filepath.Join(dir, "snowflake-client.log"), "NAT Type:"))
	network.fetchAll(t, socksPort, newRetryBudget(t, "a fetch through tor that failed", 0.5))

	// The bridge's tor saw the alias, and as USERADDR what snowflake-server
	// reported (the proxy's client_ip, port 1), passed through unchanged.
	if findLine(debugLog, "with transport '"+alias+"'") == "" {
		t.Errorf("the bridge's tor never saw transport %q", alias)
	}
	want := net.JoinHostPort(nsAddr.String(), "1")
	got := findLines(debugLog, "Received USERADDR")
	if len(got) == 0 {
		t.Error("the bridge's tor received no USERADDR")
	}
	for _, l := range got {
		if !strings.Contains(l, "to '"+want+"'") {
			t.Errorf("USERADDR is not the %s snowflake-server reported: %s", want, l)
		}
	}
	t.Logf("the bridge's tor: %d USERADDR, each %s; TRANSPORT %s", len(got), want, alias)
	// The bytes went through the proxy, which reached the bridge's
	// snowflake-server at the chain's public address.
	if findLine(proxy.log, fmt.Sprintf("connected to relay: ws://127.0.0.1:%d/", wsPort)) == "" {
		t.Error("snowflake-proxy never connected to the bridge's WebSocket address")
	}
	if n := dialed.Load(); n != 0 {
		t.Errorf("%d connections to the Bridge line's address, which snowflake never dials", n)
	}
	checkLoopbackOnly(t)

	// Each side's combiner runs obfs4proxy and its side of snowflake; when
	// a tor exits, its combiner and their PTs go with it.
	for _, ti := range []*torInstance{client, bridge} {
		pids := family(ti.cmd.Process.Pid)[1:]
		if len(pids) != 3 {
			t.Errorf("%s's tor runs %v, want its combiner, obfs4proxy and snowflake", ti.name, progNamesOf(pids))
		}
		ti.stop()
		if err := waitGone(pids, eventCeiling); err != nil {
			t.Errorf("%s: %v", ti.name, err)
		}
	}
	t.Logf("snowflake private Tor network: wall time %v in the namespace; time to 100%%: %v", time.Since(start).Round(time.Second), toFull.Round(100*time.Millisecond))
}

// countingListener listens on a loopback port and counts the connections
// made to it until the test ends.
func countingListener(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	addr := serveLoopback(t, func(c *net.TCPConn) { n.Add(1) })
	return addr, &n
}
