package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// bridgeLayout is what a bridge's torrc says to ptcombiner-server: its
// flags, the transports tor asks for in its order, and their
// ServerTransportOptions.
type bridgeLayout struct {
	flags   []string
	aliases []string
	opts    map[string]metadata.Args
}

// certs starts ptcombiner-server as tor would, with tor's state directory
// stateDir, and returns the published N.cert of every obfs4 hop, by
// "alias N". It stops the server before it returns.
func (l bridgeLayout) certs(t *testing.T, stateDir string) map[string]string {
	t.Helper()
	ft := startFakeTor(t, "unused")
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-server", Path: bin("ptcombiner-server"), Args: l.flags,
		Role: ptproc.Server, Methods: l.aliases, StateDir: stateDir, Options: l.opts,
		ExtORPort: ft.addr, AuthCookieFile: ft.cookiePath, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("starting ptcombiner-server: %v", err)
	}
	defer p.Close()
	out := map[string]string{}
	for _, alias := range l.aliases {
		m, ok := p.ServerMethods()[alias]
		if !ok {
			t.Fatalf("no SMETHOD %s: %v", alias, p.MethodErrors())
		}
		for k, v := range m.Args {
			if hop, ok := strings.CutSuffix(k, ".cert"); ok {
				out[alias+" "+hop] = v[0]
			}
		}
	}
	return out
}

// sameCerts checks that every hop of got that was published before has the
// cert it had, and remembers the new ones.
func sameCerts(t *testing.T, step string, seen, got map[string]string) {
	t.Helper()
	for hop, cert := range got {
		if was, ok := seen[hop]; ok && was != cert {
			t.Errorf("%s: %s.cert changed: every Bridge line handed out for it is broken", step, hop)
		}
		if _, ok := seen[hop]; !ok {
			seen[hop] = cert
		}
	}
}

// The bridge's identity never moves: the published N.cert of every obfs4
// hop, through real obfs4proxy, is unchanged across a restart, reordered
// --plugin and --chain flags (and transports), an added and a removed chain,
// and a changed iat-mode of a hop, alone in its obfs4proxy or sharing one.
func TestBridgeCertsSurviveTorrcEdits(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	state := t.TempDir()
	plugins := []string{"--plugin", "test=" + bin("testpt"), "--plugin", "obfs3,obfs4=" + obfs4proxy}
	chains := []string{"--chain", "o=obfs4", "--chain", "o3o4=obfs3|obfs4", "--chain", "o4o4=obfs4|obfs4", "--chain", "to4=test|obfs4"}
	// o and to4's hop 1 share an obfs4proxy (iat-mode 0), o4o4's two hops
	// share one (no options), o3o4's hop 1 has its own (iat-mode 1).
	opts := map[string]metadata.Args{
		"o":    {"iat-mode": {"0"}},
		"o3o4": {"1.iat-mode": {"1"}},
		"to4":  {"1.iat-mode": {"0"}},
	}
	base := bridgeLayout{flags: append(plugins, chains...), aliases: []string{"o", "o3o4", "o4o4", "to4"}, opts: opts}
	seen := map[string]string{}
	sameCerts(t, "first start", seen, base.certs(t, state))
	if len(seen) != 5 || seen["o 0"] != seen["to4 1"] || seen["o4o4 0"] != seen["o4o4 1"] || seen["o 0"] == seen["o4o4 0"] {
		t.Fatalf("published certs: %v, want 5, shared where an obfs4proxy is", seen)
	}
	sameCerts(t, "restart", seen, base.certs(t, state))

	reordered := base
	reordered.flags = []string{"--plugin", "obfs3,obfs4=" + obfs4proxy, "--plugin", "test=" + bin("testpt"),
		"--chain", "to4=test|obfs4", "--chain", "o4o4=obfs4|obfs4", "--chain", "o3o4=obfs3|obfs4", "--chain", "o=obfs4"}
	reordered.aliases = []string{"to4", "o4o4", "o3o4", "o"}
	sameCerts(t, "reordered", seen, reordered.certs(t, state))

	// A chain added first, with options of its own: the old naming gave it
	// the first child's directory, and so another chain's cert.
	added := base
	added.flags = append(append(append([]string(nil), plugins...), "--chain", "new=obfs4"), chains...)
	added.aliases = append([]string{"new"}, base.aliases...)
	added.opts = map[string]metadata.Args{"new": {"iat-mode": {"1"}}}
	for k, v := range opts {
		added.opts[k] = v
	}
	sameCerts(t, "added", seen, added.certs(t, state))

	removed := added
	removed.aliases = []string{"new", "o", "o4o4", "to4"}
	delete(removed.opts, "o3o4")
	removed.flags = append(append([]string(nil), plugins...), "--chain", "new=obfs4", "--chain", "o=obfs4",
		"--chain", "o4o4=obfs4|obfs4", "--chain", "to4=test|obfs4")
	sameCerts(t, "removed", seen, removed.certs(t, state))

	// iat-mode changes: o leaves the obfs4proxy it shared with to4, o4o4's
	// hop 1 leaves the one it shared with hop 0, new's changes alone.
	changed := removed
	changed.opts = map[string]metadata.Args{
		"new":  {"iat-mode": {"0"}},
		"o":    {"iat-mode": {"1"}},
		"o4o4": {"1.iat-mode": {"1"}},
		"to4":  {"1.iat-mode": {"0"}},
	}
	sameCerts(t, "changed iat-mode", seen, changed.certs(t, state))
	sameCerts(t, "back", seen, added.certs(t, state))
	t.Logf("certs: %v", seen)
	if len(seen) != 6 {
		t.Errorf("certs seen: %v, want 6", seen)
	}
}

// A bridge upgraded from a ptcombiner that named state directories by
// indexes (<program>-<plugin>-<child>) publishes the cert it published
// before, as long as its torrc is the same.
func TestBridgeCertsSurviveUpgrade(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	state := t.TempDir()
	// The old server's only child, obfs4proxy for both hops: run it there
	// directly, as the old server did.
	old := filepath.Join(state, "ptcombiner", "obfs4proxy-0-0")
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "obfs4proxy", Path: obfs4proxy, Role: ptproc.Server, Methods: []string{"obfs4"},
		StateDir: old, ORPort: "127.0.0.1:1", Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := p.ServerMethods()["obfs4"].Args.Get("cert")
	p.Close()
	if cert == "" {
		t.Fatal("obfs4proxy published no cert")
	}
	l := bridgeLayout{flags: []string{"--plugin", "obfs4=" + obfs4proxy, "--chain", "o4o4=obfs4|obfs4"}, aliases: []string{"o4o4"}}
	got := l.certs(t, state)
	for _, hop := range []string{"o4o4 0", "o4o4 1"} {
		if got[hop] != cert {
			t.Errorf("after the upgrade, %s.cert = %s, want the old one %s", hop, got[hop], cert)
		}
	}
	if b, err := os.ReadFile(filepath.Join(state, "ptcombiner", "state-dirs.json")); err != nil || !strings.Contains(string(b), `"obfs4proxy-0-0"`) {
		t.Errorf("the record does not keep the old directory: %s %v", b, err)
	}
}

// A bridge that crashed while a hop's PT rewrote obfs4_state.json (obfs4proxy
// and the module truncate it and write it again at every start) comes back
// with the cert it had: ptcombiner-server restores the last good state it
// kept, for a child (real obfs4proxy) and for the in-process obfs4 alike.
// Without the copy, the next start refuses the damaged file (SMETHOD-ERROR),
// and an operator who removes it gets a new identity.
func TestBridgeCertSurvivesDamagedState(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"obfs4proxy", []string{"--plugin", "obfs4=" + obfs4proxy, "--chain", "o=obfs4"}},
		{"builtin", []string{"--builtin", "obfs4", "--chain", "o=obfs4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			l := bridgeLayout{flags: tc.flags, aliases: []string{"o"}}
			seen := map[string]string{}
			sameCerts(t, "first start", seen, l.certs(t, state))
			files, _ := filepath.Glob(filepath.Join(state, "ptcombiner", "*", "obfs4_state.json"))
			if len(files) != 1 || seen["o 0"] == "" {
				t.Fatalf("state files %q, certs %v: want one of each", files, seen)
			}
			whole, err := os.ReadFile(files[0])
			if err != nil {
				t.Fatal(err)
			}
			for _, damage := range []struct {
				name string
				b    []byte
			}{{"empty", nil}, {"cut short", whole[:len(whole)/2]}, {"zeros", make([]byte, len(whole))}} {
				if err := os.WriteFile(files[0], damage.b, 0o600); err != nil {
					t.Fatal(err)
				}
				sameCerts(t, "state "+damage.name, seen, l.certs(t, state))
				if b, err := os.ReadFile(files[0]); err != nil || len(b) < len(whole)/2 {
					t.Errorf("state %s: the state file was not restored: %d bytes, %v", damage.name, len(b), err)
				}
			}
			// Removed, it stays removed: a new identity, as the operator asked.
			if err := os.Remove(files[0]); err != nil {
				t.Fatal(err)
			}
			if got := l.certs(t, state); got["o 0"] == seen["o 0"] {
				t.Errorf("with obfs4_state.json removed the bridge kept its cert: the copy must not undo an operator's reset")
			}
		})
	}
}
