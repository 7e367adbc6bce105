package chain

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// goptlibOkayWait is how long a goptlib-based server PT (the test PT,
// obfs4proxy, lyrebird, snowflake, webtunnel) waits for its Extended ORPort
// exchange, OKAY included, before it drops the client's connection: DialOr
// runs extOrPortSetup(s, 5*time.Second, ...), one deadline over the whole
// exchange (goptlib pt.go; PROTOCOLS.md B10).
const goptlibOkayWait = 5 * time.Second

// A tor that answers its Extended ORPort handshake later than a goptlib
// child waits for its own OKAY: the combiner answers the child at once, as
// tor does, so the stream still goes through. When the combiner answered
// the innermost child only after tor's OKAY, the child gave up at 5 s, and
// under load (tor, or the machine, slow to answer) connections were lost
// with nothing but a debug line from the child. The slow tor is the point
// of the test (a stand-in slower than goptlib's fixed bound), not a wait
// for an event.
func TestServerOkaysChildWithoutWaitingForTor(t *testing.T) {
	torLate := goptlibOkayWait + time.Second
	tor := &idTor{}
	tor.addr, tor.cookiePath = serveTor(t, func(c net.Conn, cookie []byte) {
		time.Sleep(torLate)
		tor.serve(c, cookie)
	})
	ts := startTestServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath, HandshakeTimeout: eventCeiling},
		map[string]metadata.Args{"t2": {"0.key": {"21"}, "1.key": {"22"}}}, "t2=test|test")
	if err := attributed(ts.pubs["t2"].Addr.String(), []byte{21, 22}, 1000, eventCeiling); err != nil {
		t.Fatalf("through a tor that answers after %v: %v (%s)", torLate, err, tor.summary())
	}
	if tor.streams.Load() != 1 || tor.misattributed.Load()+tor.broken.Load() != 0 {
		t.Errorf("%s", tor.summary())
	}
	if strings.Contains(ts.logs.String(), "level=WARN") {
		t.Errorf("warnings: %s", ts.logs.digest(10))
	}
}
