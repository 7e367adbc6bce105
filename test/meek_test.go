package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// obfs4 inside meek through both combiners, on a private Tor network: the
// bridge's ptcombiner-server runs obfs4proxy's obfs4 inside the project's
// own meek server (test/meekserver), which listens on the chain's public
// address itself; the client's ptcombiner-client runs obfs4proxy's obfs4
// inside its meek_lite, which POSTs to 1.url= (plain HTTP) and never
// connects to the Bridge line's address, where nothing listens. The client
// reaches 100% and fetches a page and a 2 MiB blob byte for byte; the
// bridge's tor hears the alias as TRANSPORT and, as USERADDR, what the meek
// server reported (the client's IP with port 1); no process is left behind.
func TestPrivateTorNetworkMeek(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a private Tor network")
	}
	obfs4proxy := requireProgram(t, "obfs4proxy")
	const alias = "obfs4_meek"
	start := time.Now()
	pn := startPrivNet(t)

	meekPort, nowhere := freePort(t), freePort(t)
	debugLog := t.TempDir() + "/bridge-debug.log"
	bridge := startTor(t, "bridge", append([]string{"Nickname bridge", "BridgeRelay 1", "PublishServerDescriptor 0",
		fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)), fmt.Sprintf("ExtORPort 127.0.0.1:%d", freePort(t)),
		"ExitPolicy reject *:*",
		fmt.Sprintf("ServerTransportPlugin %s exec %s --plugin obfs4=%s --plugin meek=%s --chain %s=obfs4|meek",
			alias, bin("ptcombiner-server"), obfs4proxy, bin("meekserver"), alias),
		fmt.Sprintf("ServerTransportListenAddr %s 127.0.0.1:%d", alias, meekPort),
		"Log [net,general]debug file " + debugLog}, pn.relay...)...)
	published := bridgeLine(t, bridge.waitFile(t, "bridgelines", eventCeiling), alias)
	if !strings.Contains(published, fmt.Sprintf(" 127.0.0.1:%d ", meekPort)) || !strings.Contains(published, " 0.cert=") {
		t.Fatalf("the published line is not the meek server's address with obfs4's hop 0 args: %s", published)
	}
	pn.waitBridgeKnowsRelays(t, bridge)
	t.Logf("network ready after %v", time.Since(start).Round(time.Second))

	// The client's line: the published one, its address replaced by one
	// where nothing listens, and meek_lite's url for hop 1.
	f := strings.Fields(published)
	f[2] = fmt.Sprintf("127.0.0.1:%d", nowhere)
	line := strings.Join(append(f, fmt.Sprintf("1.url=http://127.0.0.1:%d/", meekPort)), " ")
	socksPort := freePort(t)
	clientStart := time.Now()
	client := startTor(t, "client", append([]string{"UseBridges 1", line, "ConfluxEnabled 0",
		fmt.Sprintf("ClientTransportPlugin %s exec %s --plugin obfs4,meek_lite=%s --chain %s=obfs4|meek_lite",
			alias, bin("ptcombiner-client"), obfs4proxy, alias),
		fmt.Sprintf("SocksPort 127.0.0.1:%d", socksPort)}, pn.common...)...)
	client.waitLog(t, "Bootstrapped 100% (done)", 150*time.Second)
	t.Logf("%s: bootstrapped to 100%% in %v", alias, time.Since(clientStart).Round(100*time.Millisecond))
	fetchStart := time.Now()
	pn.fetchAll(t, socksPort, newRetryBudget(t, "a fetch through tor that failed", 0.5))
	t.Logf("the page and the 2 MiB blob through obfs4|meek in %v", time.Since(fetchStart).Round(100*time.Millisecond))

	if c := establishedTo(t, nowhere); len(c) > 0 {
		t.Errorf("something connected to the Bridge line's address: %v", c)
	}
	seen := findLines(debugLog, "Received USERADDR")
	if len(seen) == 0 {
		t.Error("the bridge's tor logged no USERADDR")
	}
	for _, l := range seen {
		if !strings.Contains(l, "to '127.0.0.1:1'") {
			t.Errorf("the bridge's tor was told another USERADDR than the meek server's 127.0.0.1:1: %s", l)
		}
	}
	if findLine(debugLog, "with transport '"+alias+"'") == "" {
		t.Errorf("the bridge's tor never saw transport %q", alias)
	}
	checkLoopbackOnly(t)

	// Each side's combiner runs obfs4proxy, and the bridge's the meek
	// server too; when a tor exits, its combiner and their PTs go with it.
	for _, side := range []struct {
		tor   *torInstance
		procs int
	}{{client, 2}, {bridge, 3}} {
		tor := side.tor
		pids := family(tor.cmd.Process.Pid)[1:]
		if len(pids) != side.procs {
			t.Errorf("%s's tor runs %v, want its combiner and %d PTs", tor.name, pids, side.procs-1)
		}
		tor.stop()
		if err := waitGone(pids, eventCeiling); err != nil {
			t.Error(err)
		}
	}
	t.Logf("wall time %v", time.Since(start).Round(time.Second))
}

// Without tor: the meek server, a chain's outermost hop, listens on the
// chain's address itself (its GET / answers there), and the port 0 it
// refuses, as meek-server does, comes back in its own words.
func TestServerMeekListensItself(t *testing.T) {
	port := freePort(t)
	srv := startStandalone(t, 1, bin("ptcombiner-server"), "--plugin", "meek="+bin("meekserver"), "--chain", "m=meek",
		"--listen", fmt.Sprintf("m=127.0.0.1:%d", port), "--forward", echoServer(t), "--state-dir", t.TempDir())
	if f := strings.Fields(srv[0]); len(f) < 3 || f[2] != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Fatalf("server printed %q, want the chain at the address it was given", srv[0])
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "happy little web server") {
		t.Errorf("GET / at the chain's address: %q, want the meek server's answer", body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin("ptcombiner-server"), "--plugin", "meek="+bin("meekserver"), "--chain", "m=meek",
		"--listen", "m=127.0.0.1:0", "--forward", "127.0.0.1:1", "--state-dir", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `chain m: hop 0 (meek): the program says: cannot listen on port 0`) {
		t.Errorf("a meek chain on port 0: %v\n%s", err, out)
	}
}
