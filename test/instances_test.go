package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two bridge tor instances of one bridge (the same identity keys, copied
// from one DataDirectory to the other before they start; each its own
// ORPort, ExtORPort and cookie; no ServerTransportPlugin) behind one
// ptcombiner-server run without tor, given both with --tor-extorport.
// Clients bootstrap to 100% and fetch through it; the second client's
// connection goes to the instance the first does not use (fewest open), so
// both instances serve; when one instance stops, a new client bootstraps
// through the other and no client's connection fails in ptcombiner-server
// (the 1000-connection spread and the failover in detail:
// chain's TestServerTorInstancesSpread and TestServerTorInstancesFailover).
func TestPrivateTorNetworkTwoInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a private Tor network")
	}
	const alias = "obfs4"
	start := time.Now()
	pn := startPrivNet(t)

	// One identity: instance a's keys, made first, copied to b.
	var dirs [2]string
	for i := range dirs {
		d, err := os.MkdirTemp("", "ptcombiner-tor-instance-")
		if err != nil {
			t.Fatal(err)
		}
		dirs[i] = d
	}
	empty := filepath.Join(t.TempDir(), "empty-torrc")
	os.WriteFile(empty, nil, 0o600)
	out, err := exec.Command("tor", "--list-fingerprint", "--DataDirectory", dirs[0], "--ORPort", fmt.Sprint(freePort(t)),
		"--defaults-torrc", empty, "-f", empty).Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fp := strings.Join(strings.Fields(lines[len(lines)-1])[1:], "")
	if err != nil || len(fp) != 40 {
		t.Fatalf("the bridge's fingerprint: %q, %v\n%s", fp, err, out)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(dirs[0], "keys"), filepath.Join(dirs[1], "keys")).CombinedOutput(); err != nil {
		t.Fatalf("copying the keys: %v\n%s", err, out)
	}

	type instance struct {
		tor           *torInstance
		extPort       int
		cookie, debug string
	}
	var insts [2]*instance
	flags := []string{"--builtin", "obfs4"}
	for i, dir := range dirs {
		in := &instance{extPort: freePort(t), cookie: filepath.Join(dir, "extended_orport_auth_cookie"),
			debug: filepath.Join(t.TempDir(), "debug.log")}
		in.tor = startTorIn(t, fmt.Sprintf("bridge-%c", 'a'+i), dir, append([]string{"Nickname bridge", "BridgeRelay 1",
			"PublishServerDescriptor 0", fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)),
			fmt.Sprintf("ExtORPort 127.0.0.1:%d", in.extPort), "ExitPolicy reject *:*",
			"Log [net,general]debug file " + in.debug}, pn.relay...)...)
		insts[i] = in
		flags = append(flags, "--tor-extorport", fmt.Sprintf("127.0.0.1:%d=%s", in.extPort, in.cookie))
	}
	for _, in := range insts {
		in.tor.waitFile(t, "extended_orport_auth_cookie", eventCeiling)
		if b := in.tor.waitFile(t, "fingerprint", eventCeiling); !strings.Contains(b, fp) {
			t.Fatalf("%s's fingerprint file %q does not name the shared identity %s", in.tor.name, b, fp)
		}
	}
	pub := freePort(t)
	serverLog := filepath.Join(t.TempDir(), "server.log")
	printed := startStandalone(t, 1, bin("ptcombiner-server"), append(flags, "--listen", fmt.Sprintf("%s=127.0.0.1:%d", alias, pub),
		"--state-dir", t.TempDir(), "--log-file", serverLog)...)
	f := strings.Fields(printed[0]) // CHAIN obfs4 <addr> ARGS cert=...;iat-mode=0
	if len(f) != 5 {
		t.Fatalf("ptcombiner-server printed %q", printed[0])
	}
	line := strings.Join([]string{"Bridge", alias, f[2], fp, strings.ReplaceAll(f[4], ";", " ")}, " ")
	for _, in := range insts {
		pn.waitBridgeKnowsRelays(t, in.tor)
	}
	t.Logf("network ready after %v; %s", time.Since(start).Round(time.Second), line)

	fetches := newRetryBudget(t, "a fetch through tor that failed", 0.5)
	client := func(name string) {
		t.Helper()
		socksPort := freePort(t)
		c := startTor(t, name, append([]string{"UseBridges 1", line, "ConfluxEnabled 0",
			fmt.Sprintf("ClientTransportPlugin %s exec %s --builtin obfs4", alias, bin("ptcombiner-client")),
			fmt.Sprintf("SocksPort 127.0.0.1:%d", socksPort)}, pn.common...)...)
		began := time.Now()
		c.waitLog(t, "Bootstrapped 100% (done)", 150*time.Second)
		pn.fetchAll(t, socksPort, fetches)
		t.Logf("%s: 100%% and both fetches in %v", name, time.Since(began).Round(100*time.Millisecond))
	}
	// heard is what each instance's tor heard as USERADDR.
	heard := func(in *instance) []string { return findLines(in.debug, "Received USERADDR") }
	client("client-1")
	client("client-2")
	for _, in := range insts {
		if len(heard(in)) == 0 {
			t.Errorf("%s heard no client: the streams were not spread", in.tor.name)
		}
	}
	truth := establishedTo(t, pub)
	for _, in := range insts {
		for _, l := range heard(in) {
			ok := false
			for _, a := range truth {
				ok = ok || strings.Contains(l, "to '"+a+"'")
			}
			if !ok {
				t.Logf("%s: a USERADDR of a connection no longer open (a client's first, closed): %s", in.tor.name, l)
			}
		}
	}

	// Instance a stops; a new client bootstraps through b.
	before := len(heard(insts[1]))
	insts[0].tor.stop()
	client("client-3")
	if len(heard(insts[1])) <= before {
		t.Error("instance b heard no new client after a stopped")
	}
	if l := findLines(serverLog, "cannot reach tor"); len(l) > 0 {
		t.Errorf("a client's connection failed in ptcombiner-server: %s", l[0])
	}
	if n := len(findLines(serverLog, `level=WARN msg="a tor instance failed`)); n != 1 {
		t.Errorf("%d warnings that an instance failed, want 1 (the first detection; later ones at debug)", n)
	}
	checkLoopbackOnly(t)
	t.Logf("USERADDR heard: instance a %d, instance b %d; wall time %v", len(heard(insts[0])), len(heard(insts[1])),
		time.Since(start).Round(time.Second))
}
