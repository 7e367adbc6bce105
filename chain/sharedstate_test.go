package chain

import (
	"context"
	"path/filepath"
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

// Servers that share a state directory and start at once (tor starts the
// ptcombiner-servers of all its ServerTransportPlugin lines together)
// each record their slots: none writes a record read before another's
// save, which would drop that server's positions and, for a position that
// had moved to a copy, its keys on the next start.
func TestServersStartingTogetherKeepEachOthersRecord(t *testing.T) {
	const rounds = 10
	for round := 0; round < rounds; round++ {
		state := t.TempDir()
		aliases := []string{"a", "b", "c"}
		errs := make(chan error, len(aliases))
		for _, alias := range aliases {
			cfg, binds := hopsConfig(t, nil, "--builtin", "obfs4", "--chain", alias+"=obfs4")
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			srv := NewServer(ServerOptions{Config: cfg, StateDir: state, Logger: newLogger(&logBuf{}),
				TorExtORPort: "127.0.0.1:1", TorCookiePath: filepath.Join(state, "no-cookie")})
			t.Cleanup(func() { srv.Close() })
			go func() {
				_, err := srv.Start(context.Background(), binds)
				errs <- err
			}()
		}
		for range aliases {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		record, err := readStateDirs(state)
		if err != nil {
			t.Fatal(err)
		}
		for _, alias := range aliases {
			if _, ok := record.dirs[slot{Alias: alias, Hop: 0, Method: "obfs4"}]; !ok {
				t.Fatalf("round %d: the record lost chain %s: %v", round, alias, record.dirs)
			}
		}
	}
}
