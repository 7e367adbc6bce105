package test

// A private Tor network on loopback, offline (../shared/docs/TOR-E2E.md,
// Level 2): a directory authority, an exit relay, a bridge whose tor runs
// three ptcombiner-servers (obfs4proxy hops, in-process hops, and both
// mixed in one chain) and, for each chain, a client running
// ptcombiner-client that bootstraps to 100% and fetches pages through the
// chain.
//
// No chain here ends in an "indirect" PT. obfs4proxy's meek_lite is a client
// only and needs an HTTPS front and a meek server, neither of which exists
// offline on this machine; snowflake needs its broker and WebRTC proxies.
// The client supports such a PT as the last hop (it is asked for the bridge
// address and may ignore it), but the suite cannot run one.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// networkCombiner is one ptcombiner-server of the bridge (one
// ServerTransportPlugin line, as in docs/bridge.md) and the chains it
// serves; each chain's client runs ptcombiner-client with the same flags.
// A method is builtin or a program's, never both, in one combiner's
// configuration, so each mix of hop kinds has a combiner of its own.
type networkCombiner struct {
	flags    []string // how the hops' methods are served (--builtin, --plugin)
	programs int      // the PT programs (obfs4proxy) each side's combiner runs
	chains   []networkChain
}

type networkChain struct{ alias, chain string }

// networkCombiners are the combiners and chains the suite runs.
func networkCombiners(obfs4proxy string) []networkCombiner {
	return []networkCombiner{
		{flags: []string{"--plugin", "obfs3,obfs4=" + obfs4proxy}, programs: 1, chains: []networkChain{
			{"obfs4", "obfs4"}, {"obfs3_obfs4", "obfs3|obfs4"}, {"obfs4_obfs4", "obfs4|obfs4"}}},
		{flags: []string{"--builtin", "obfs3,obfs4"}, programs: 0, chains: []networkChain{
			{"obfs3_obfs4_builtin", "obfs3|obfs4"}}},
		{flags: []string{"--builtin", "obfs3", "--plugin", "obfs4=" + obfs4proxy}, programs: 1, chains: []networkChain{
			{"obfs3_obfs4_mixed", "obfs3|obfs4"}}},
	}
}

// flagsWithChains is the combiner's command line: its hops, then its chains.
func (c networkCombiner) flagsWithChains() []string {
	flags := append([]string(nil), c.flags...)
	for _, ch := range c.chains {
		flags = append(flags, "--chain", ch.alias+"="+ch.chain)
	}
	return flags
}

func TestPrivateTorNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a private Tor network")
	}
	requireProgram(t, "tor")
	gencert := requireProgram(t, "tor-gencert")
	obfs4proxy := requireProgram(t, "obfs4proxy")
	suiteStart := time.Now()

	// The web server the client fetches from, through the exit.
	blob := make([]byte, 2<<20)
	rand.Read(blob)
	page := []byte("<html><body>ptcombiner private network</body></html>\n")
	web, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write(page) })
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) { w.Write(blob) })
	hs := &http.Server{Handler: mux}
	go hs.Serve(web)
	defer hs.Close()
	httpPort := web.Addr().(*net.TCPAddr).Port

	// The authority's keys and fingerprints.
	authDir, err := os.MkdirTemp("", "ptcombiner-tor-auth-")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(authDir, "keys"), 0o700)
	authOR, authDirPort := freePort(t), freePort(t)
	cmd := exec.Command(gencert, "--create-identity-key", "-m", "12", "-a", fmt.Sprintf("127.0.0.1:%d", authDirPort),
		"-i", filepath.Join(authDir, "keys", "authority_identity_key"),
		"-s", filepath.Join(authDir, "keys", "authority_signing_key"),
		"-c", filepath.Join(authDir, "keys", "authority_certificate"), "--passphrase-fd", "0")
	cmd.Stdin = strings.NewReader("\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tor-gencert: %v\n%s", err, out)
	}
	certText, _ := os.ReadFile(filepath.Join(authDir, "keys", "authority_certificate"))
	v3ident := ""
	for _, line := range strings.Split(string(certText), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "fingerprint" {
			v3ident = f[1]
		}
	}
	empty := filepath.Join(t.TempDir(), "empty-torrc")
	os.WriteFile(empty, nil, 0o600)
	out, err := exec.Command("tor", "--list-fingerprint", "--DataDirectory", authDir,
		"--ORPort", fmt.Sprint(authOR), "--defaults-torrc", empty, "-f", empty).Output()
	if err != nil || v3ident == "" {
		t.Fatalf("fingerprints: v3ident %q, %v\n%s", v3ident, err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fpFields := strings.Fields(lines[len(lines)-1])
	fingerprint := strings.Join(fpFields[1:], "")
	if len(fingerprint) != 40 {
		t.Fatalf("relay fingerprint %q from %q", fingerprint, out)
	}
	dirAuth := fmt.Sprintf("DirAuthority auth orport=%d no-v2 v3ident=%s 127.0.0.1:%d %s", authOR, v3ident, authDirPort, fingerprint)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o600)
	common := []string{"TestingTorNetwork 1", dirAuth, "PathsNeededToBuildCircuits 0.67"}
	relay := append([]string{"Address 127.0.0.1", "AssumeReachable 1", "SocksPort 0",
		"ServerDNSResolvConfFile " + resolv, "ServerDNSAllowBrokenConfig 1", "ServerDNSDetectHijacking 0"}, common...)

	startTorIn(t, "authority", authDir, append([]string{"Nickname auth",
		fmt.Sprintf("ORPort 127.0.0.1:%d", authOR), fmt.Sprintf("DirPort 127.0.0.1:%d", authDirPort),
		"AuthoritativeDirectory 1", "V3AuthoritativeDirectory 1", "ContactInfo ptcombiner-test",
		"TestingV3AuthInitialVotingInterval 5", "TestingV3AuthInitialVoteDelay 2", "TestingV3AuthInitialDistDelay 2",
		"V3AuthVotingInterval 10", "V3AuthVoteDelay 2", "V3AuthDistDelay 2", "V3AuthNIntervalsValid 2",
		"TestingDirAuthVoteExit *", "TestingDirAuthVoteGuard *", "TestingDirAuthVoteHSDir *",
		"TestingMinExitFlagThreshold 0", "ExitPolicy reject *:*"}, relay...)...)
	startTor(t, "exit", append([]string{"Nickname exit",
		fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)), fmt.Sprintf("DirPort 127.0.0.1:%d", freePort(t)),
		"ExitRelay 1", "ExitPolicyRejectPrivate 0", "ExitPolicyRejectLocalInterfaces 0",
		"ExitPolicy accept 127.0.0.0/8:*", fmt.Sprintf("ExitPolicy accept *:%d", httpPort), "ExitPolicy reject *:*",
		"RefuseUnknownExits 0"}, relay...)...)

	// The bridge serves every chain at once, each on its own public port,
	// from one ptcombiner-server per combiner.
	type networkRun struct {
		networkChain
		combiner networkCombiner
	}
	var all []networkRun
	ports := map[string]int{}
	bridgeLines := []string{"Nickname bridge", "BridgeRelay 1", "PublishServerDescriptor 0",
		fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)), fmt.Sprintf("ExtORPort 127.0.0.1:%d", freePort(t)),
		"ExitPolicy reject *:*"}
	combiners := networkCombiners(obfs4proxy)
	for _, c := range combiners {
		var aliases []string
		for _, ch := range c.chains {
			all = append(all, networkRun{ch, c})
			aliases = append(aliases, ch.alias)
			ports[ch.alias] = freePort(t)
			bridgeLines = append(bridgeLines, fmt.Sprintf("ServerTransportListenAddr %s 127.0.0.1:%d", ch.alias, ports[ch.alias]))
		}
		bridgeLines = append(bridgeLines, fmt.Sprintf("ServerTransportPlugin %s exec %s %s",
			strings.Join(aliases, ","), bin("ptcombiner-server"), strings.Join(c.flagsWithChains(), " ")))
	}
	debugLog := filepath.Join(t.TempDir(), "bridge-debug.log")
	bridge := startTor(t, "bridge", append(append(bridgeLines, "Log [net,general]debug file "+debugLog), relay...)...)
	// Each combiner reports its SMETHODs on its own; tor rewrites the file
	// as they come.
	var bridgelines string
	waitFor(t, "a Bridge line for every chain in the bridge's bridgelines file", eventCeiling, func() bool {
		b, _ := os.ReadFile(filepath.Join(bridge.dir, "bridgelines"))
		bridgelines = string(b)
		for _, ch := range all {
			if _, ok := findBridgeLine(bridgelines, ch.alias); !ok {
				return false
			}
		}
		return true
	})

	// The client starts when the bridge knows both relays (TOR-E2E.md).
	deadline := time.Now().Add(120 * time.Second)
	for {
		cons, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdesc-consensus"))
		md1, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdescs"))
		md2, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdescs.new"))
		if bytes.Contains(cons, []byte("\nr auth ")) && bytes.Contains(cons, []byte("\nr exit ")) && len(md1)+len(md2) > 0 &&
			bytes.Count(append(md1, md2...), []byte("onion-key")) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bridge's consensus does not list both relays after 120 s:\n%s", cons)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("network ready after %v", time.Since(suiteStart).Round(time.Second))
	if kids := progNames(childPids(bridge.cmd.Process.Pid)); len(kids) != len(combiners) ||
		slices.ContainsFunc(kids, func(n string) bool { return n != "ptcombiner-server" }) {
		t.Fatalf("the bridge's tor runs %v, want %d ptcombiner-server", kids, len(combiners))
	}

	times := map[string]time.Duration{}
	// A fetch through a fresh circuit may fail (tor's own timeouts on a busy
	// machine): it is retried, each retry printed, at most one per two
	// fetches in all.
	fetches := newRetryBudget(t, "a fetch through tor that failed", 0.5)
	for _, ch := range all {
		t.Run(ch.alias, func(t *testing.T) {
			line := bridgeLine(t, bridgelines, ch.alias)
			socksPort := freePort(t)
			start := time.Now()
			client := startTor(t, "client-"+ch.alias, append([]string{"UseBridges 1", line, "ConfluxEnabled 0",
				fmt.Sprintf("ClientTransportPlugin %s exec %s %s", ch.alias, bin("ptcombiner-client"), strings.Join(ch.combiner.flagsWithChains(), " ")),
				fmt.Sprintf("SocksPort 127.0.0.1:%d", socksPort)}, common...)...)
			client.waitLog(t, "Bootstrapped 100% (done)", 150*time.Second)
			times[ch.alias] = time.Since(start)
			t.Logf("%s: bootstrapped to 100%% in %v", ch.alias, times[ch.alias].Round(100*time.Millisecond))

			// A page and a 2 MiB blob through the client's SocksPort.
			dialer, _ := proxy.SOCKS5("tcp", fmt.Sprintf("127.0.0.1:%d", socksPort), nil, proxy.Direct)
			hc := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					return dialer.(proxy.ContextDialer).DialContext(ctx, network, addr)
				},
			}}
			for path, want := range map[string][]byte{"/": page, "/blob": blob} {
				var got []byte
				err := fetches.run(t, 3, func() error {
					resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path))
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					got, err = io.ReadAll(resp.Body)
					return err
				})
				if err != nil {
					t.Fatalf("fetch %s: %v", path, err)
				}
				if sha256.Sum256(got) != sha256.Sum256(want) {
					t.Fatalf("fetch %s: %d bytes that differ from the %d served", path, len(got), len(want))
				}
			}

			// The bridge's tor learned the client-side socket and the alias.
			truth := establishedTo(t, ports[ch.alias])
			if len(truth) == 0 {
				t.Fatal("no established connection to the chain's public port")
			}
			found := false
			for _, l := range findLines(debugLog, "Received USERADDR") {
				for _, a := range truth {
					if strings.Contains(l, "to '"+a+"'") {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("no USERADDR line names the client-side socket %v", truth)
			}
			if findLine(debugLog, "with transport '"+ch.alias+"'") == "" {
				t.Errorf("the bridge's tor never saw transport %q", ch.alias)
			}
			checkLoopbackOnly(t)

			// Each side's combiner runs its PT programs and nothing else; a
			// chain of in-process hops, none.
			server := childWith(bridge.cmd.Process.Pid, ch.alias+"="+ch.chain)
			if server == 0 {
				t.Fatalf("no child of the bridge's tor serves %s", ch.alias)
			}
			checkPrograms(t, "the bridge's ptcombiner-server", server, ch.combiner.programs)
			kids := childPids(client.cmd.Process.Pid)
			if len(kids) != 1 || progName(kids[0]) != "ptcombiner-client" {
				t.Fatalf("the client's tor runs %v, want ptcombiner-client alone", progNames(kids))
			}
			checkPrograms(t, "the client's ptcombiner-client", kids[0], ch.combiner.programs)

			// When the client's tor exits, its combiner and PTs go too.
			pids := family(client.cmd.Process.Pid)[1:]
			client.stop()
			if err := waitGone(pids, eventCeiling); err != nil {
				t.Error(err)
			}
		})
	}
	bpids := family(bridge.cmd.Process.Pid)[1:]
	bridge.stop()
	if err := waitGone(bpids, eventCeiling); err != nil {
		t.Error(err)
	}
	var parts []string
	for _, ch := range all {
		parts = append(parts, fmt.Sprintf("%s %v", ch.alias, times[ch.alias].Round(100*time.Millisecond)))
	}
	t.Logf("private Tor network: wall time %v; time to 100%%: %s", time.Since(suiteStart).Round(time.Second), strings.Join(parts, ", "))
}

// findLines returns every line of the file at path that contains s.
func findLines(path, s string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// checkPrograms checks that the combiner pid runs exactly programs
// processes below it, each obfs4proxy.
func checkPrograms(t *testing.T, who string, pid, programs int) {
	t.Helper()
	names := progNames(family(pid)[1:])
	if len(names) != programs || slices.ContainsFunc(names, func(n string) bool { return n != "obfs4proxy" }) {
		t.Errorf("%s runs %v, want %d obfs4proxy", who, names, programs)
	}
}

// childWith returns the child of pid that has arg among its arguments, or 0.
func childWith(pid int, arg string) int {
	for _, k := range childPids(pid) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k))
		if slices.Contains(strings.Split(string(b), "\x00"), arg) {
			return k
		}
	}
	return 0
}

// progName is the base name of the program pid runs (its argv[0]; comm
// cuts names at 15 bytes).
func progName(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return filepath.Base(argv0)
}

func progNames(pids []int) []string {
	names := make([]string, len(pids))
	for i, p := range pids {
		names[i] = progName(p)
	}
	return names
}
