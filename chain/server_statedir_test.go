package chain

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// In-process obfs4 keeps its keys in the server's state directory: Start
// refuses to run without one, and makes a missing one (0700), as
// transport.ServerConfig does for a hop's.
func TestServerStateDir(t *testing.T) {
	cfg, binds := hopsConfig(t, nil, "--builtin", "obfs4", "--chain", "o=obfs4")
	srv := NewServer(ServerOptions{Config: cfg, Logger: newLogger(&logBuf{})})
	defer srv.Close()
	if _, err := srv.Start(context.Background(), binds); err == nil || !strings.Contains(err.Error(), "StateDir is required") {
		t.Errorf("Start without a state directory: %v, want it refused", err)
	}

	dir := filepath.Join(t.TempDir(), "not", "yet")
	ts, _ := startServerConfig(t, cfg, ServerOptions{StateDir: dir, TorORPort: "127.0.0.1:1"}, binds)
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("the state directory after Start: %v, %v; want it made 0700", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "builtin-o-0", "obfs4_state.json")); err != nil {
		t.Errorf("obfs4's keys: %v", err)
	}
	if len(ts.pubs["o"].Args) == 0 {
		t.Error("the chain publishes no arguments")
	}
}
