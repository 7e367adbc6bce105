package chain

import (
	"testing"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// Two servers in one state directory, as tor runs the ptcombiner-servers
// of two ServerTransportPlugin lines (both get tor's pt_state): each
// child authenticates to its own Extended ORPort with its own cookie, so
// the server started second does not lock the first one's children out.
func TestServersShareStateDir(t *testing.T) {
	tor := startEchoTor(t)
	state := t.TempDir()
	var servers []*testServer
	for _, alias := range []string{"a", "b"} {
		cfg, binds := hopsConfig(t, map[string]metadata.Args{alias: {"0.key": {"5"}}},
			"--plugin", "test="+testpt, "--chain", alias+"=test")
		ts, _ := startServerConfig(t, cfg, ServerOptions{StateDir: state, TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath}, binds)
		servers = append(servers, ts)
	}
	for i, alias := range []string{"a", "b"} {
		roundTrips(t, servers[i], tor, alias, clientFor(t, "test"), []int{1000}, true)
	}
}
