package test

// A private Tor network on loopback, offline (../shared/docs/TOR-E2E.md,
// Level 2): a directory authority, an exit relay, a bridge whose tor runs
// three ptcombiner-servers (obfs4proxy hops, in-process hops, and both
// mixed in one chain) and, for each chain, a client running
// ptcombiner-client that bootstraps to 100% and fetches pages through the
// chain.
//
// Chains that end in an indirect PT run on networks of their own:
// obfs4|meek in meek_test.go, obfs4|snowflake (in a network namespace) in
// snowflake_test.go. The network itself (authority, exit, web server) is
// privnet_test.go's.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
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
	obfs4proxy := requireProgram(t, "obfs4proxy")
	suiteStart := time.Now()
	n := startPrivNet(t)
	common, relay := n.common, n.relay

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
	n.waitBridgeKnowsRelays(t, bridge)
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
			n.fetchAll(t, socksPort, fetches)

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
