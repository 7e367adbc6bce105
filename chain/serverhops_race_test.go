package chain

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// mixedRaceCases are chains of an in-process hop and test PT children
// whose servers wait up to 30 ms at random before they report on their
// Extended ORPort, so that arrivals reorder: the in-process hop outside the
// children, inside them, and between two. The in-process hop is obfs2, the
// builtin that costs least CPU: with obfs4's handshakes under -race on a
// loaded machine, hundreds of connections at once starve the children's
// Extended ORPort handshakes past goptlib's 5 s deadline (DialOr), which
// says nothing of attribution.
var mixedRaceCases = []struct {
	name, chain string
	opts        metadata.Args
}{
	{"inprocess outside", "test|test|obfs2", metadata.Args{"0.key": {"31"}, "1.key": {"32"}, "0.delay": {"30"}, "1.delay": {"30"}}},
	{"inprocess inside", "obfs2|test|test", metadata.Args{"1.key": {"33"}, "2.key": {"34"}, "1.delay": {"30"}, "2.delay": {"30"}}},
	{"inprocess between", "test|obfs2|test", metadata.Args{"0.key": {"35"}, "2.key": {"36"}, "0.delay": {"30"}, "2.delay": {"30"}}},
}

// mixedRace runs total connections at the given concurrency through a
// mixed chain, each stream naming its client's own socket in its first
// line, and returns tor's view and the failed connections.
func mixedRace(t *testing.T, chain string, opts metadata.Args, total, workers int) (*idTor, []string) {
	t.Helper()
	tor := startIDTor(t)
	cfg, binds := hopsConfig(t, map[string]metadata.Args{"m": opts},
		"--builtin", "obfs2", "--plugin", "test="+testpt, "--chain", "m="+chain)
	ts, _ := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath}, binds)
	if n := len(ts.srv.Processes()); n != 2 {
		t.Fatalf("%s runs on %d children, want 2", chain, n)
	}
	d := clientFor(t, strings.Split(chain, "|")...)
	pub := ts.pubs["m"]
	failures := runLoad(total, workers, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		conn, local, err := dialChain(ctx, d, pub, nil)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		return echoThrough(conn, "ID "+local+"\n", 100+i%1500)
	})
	if n := ts.srv.PendingStamps(); n != 0 {
		t.Errorf("%d stamps left in the book", n)
	}
	return tor, failures
}

// The attribution race through mixed chains: every stream reaches tor with
// its own client's address, whether the in-process hop is outside the
// children (the engine dials them with the unwrapped stream), inside them
// (it unwraps a child's arrival), or between two.
func TestServerAttributionRaceEngineMixed(t *testing.T) {
	total, workers := 1000, 100
	if testing.Short() {
		total, workers = 300, 50
	}
	for _, rc := range mixedRaceCases {
		t.Run(rc.name, func(t *testing.T) {
			tor, failures := mixedRace(t, rc.chain, rc.opts, total, workers)
			tor.checkAll(t, total, failures)
		})
	}
}

// The negative control for the mixed chains: matched by arrival order, the
// race must show misattributed streams.
func TestServerAttributionRaceMixedCatchesOrderMatching(t *testing.T) {
	const total, workers = 300, 50
	for _, rc := range mixedRaceCases {
		t.Run(rc.name, func(t *testing.T) {
			wrongMatcher = oldestPending
			t.Cleanup(func() { wrongMatcher = nil }) // after the server's own cleanup
			tor, failures := mixedRace(t, rc.chain, rc.opts, total, workers)
			t.Logf("with the order matcher: %d of %d connections failed; %s", len(failures), total, tor.summary())
			if tor.misattributed.Load() == 0 {
				t.Errorf("the race test did not catch a server that matches by arrival order: %s", tor.summary())
			}
		})
	}
}
