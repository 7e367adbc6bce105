package chain

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// layout is what an operator's torrc says to ptcombiner-server: the
// --plugin and --chain flags, tor's order of the transports and their
// ServerTransportOptions.
type layout struct {
	plugins, chains, binds []string
	opts                   map[string]metadata.Args
}

// keyFile stands for a PT's key in its state directory: the test PT keeps
// none, so the test writes one where a child runs without one, as obfs4
// does at its first start.
const keyFile = "key"

// start runs a Server for l in stateDir, as one start of the bridge, and
// returns the key each slot's child runs with. Each child has a directory
// of its own.
func (l layout) start(t *testing.T, stateDir string) map[slot]string {
	t.Helper()
	cfg := &Config{ServerOptions: l.opts}
	for _, p := range l.plugins {
		if err := cfg.AddPluginFlag(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range l.chains {
		if err := cfg.AddChainFlag(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	logs := &logBuf{}
	srv := NewServer(ServerOptions{Config: cfg, StateDir: stateDir, Logger: newLogger(logs), TorORPort: "127.0.0.1:1"})
	defer srv.Close()
	var binds []Bind
	for _, b := range l.binds {
		binds = append(binds, Bind{Alias: b, Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}})
	}
	pubs, err := srv.Start(context.Background(), binds)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pubs {
		if p.Err != nil {
			t.Fatalf("%s: %v\nlogs: %s", p.Alias, p.Err, logs.digest(10))
		}
	}
	var childDirs []string
	for _, c := range srv.children {
		childDirs = append(childDirs, c.stateDir)
	}
	if slices.Sort(childDirs); len(slices.Compact(slices.Clone(childDirs))) != len(childDirs) {
		t.Fatalf("children share a state directory: %q", childDirs)
	}
	record, err := readStateDirs(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[slot]string{}
	for _, alias := range l.binds {
		ch, _ := cfg.Lookup(alias)
		for hop, m := range ch.Hops {
			sl := slot{Alias: alias, Hop: hop, Method: m}
			dir, ok := record.dirs[sl]
			if !ok || !slices.Contains(childDirs, dir) {
				t.Fatalf("%v: recorded directory %q (%v), children's %q", sl, dir, ok, childDirs)
			}
			keys[sl] = readOrMakeKey(t, filepath.Join(stateDir, dir))
		}
	}
	return keys
}

func readOrMakeKey(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, keyFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		b = []byte(rand.Text()) // a fresh "key"
		err = os.WriteFile(path, b, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// secondProgram returns another path to the test PT, so that a config can
// name two programs (plugins of one path are one program).
func secondProgram(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "testptb")
	if err := os.Symlink(testpt, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// keep checks that every slot of got that was seen before has the key it
// had, and remembers the new ones.
func keep(t *testing.T, step string, seen, got map[slot]string) {
	t.Helper()
	for sl, k := range got {
		if was, ok := seen[sl]; ok && was != k {
			t.Errorf("%s: %s hop %d (%s) changed its key", step, sl.Alias, sl.Hop, sl.Method)
		}
		if _, ok := seen[sl]; !ok {
			seen[sl] = k
		}
	}
}

// A slot's state directory, and so its keys, survive every edit of the
// torrc: a restart, reordered --plugin and --chain flags and transports, a
// chain added before the others and one removed, changed options of a hop
// that shared its PT (it moves to a copy of the state), the chain added
// back and the options changed back.
func TestServerStateDirsSurviveEdits(t *testing.T) {
	dir, testptb := t.TempDir(), secondProgram(t)
	// c's two hops and b's hop 1 share one child (test, no options); a
	// (test, key 7) and b's hop 0 (testb) have their own.
	base := layout{
		plugins: []string{"test=" + testpt, "testb=" + testptb},
		chains:  []string{"a=test", "b=testb|test", "c=test|test"},
		binds:   []string{"a", "b", "c"},
		opts:    map[string]metadata.Args{"a": {"key": {"7"}}, "b": {"0.key": {"8"}}},
	}
	seen := map[slot]string{}
	keep(t, "first start", seen, base.start(t, dir))
	keep(t, "restart", seen, base.start(t, dir))

	reordered := base
	reordered.plugins = []string{"testb=" + testptb, "test=" + testpt}
	reordered.chains = []string{"c=test|test", "b=testb|test", "a=test"}
	reordered.binds = []string{"c", "b", "a"}
	keep(t, "reordered", seen, reordered.start(t, dir))

	added := base
	added.chains = append([]string{"e=test"}, append(base.chains, "f=test|testb")...)
	added.binds = append([]string{"e"}, append(base.binds, "f")...)
	added.opts = map[string]metadata.Args{"e": {"key": {"99"}}, "a": {"key": {"7"}}, "b": {"0.key": {"8"}}}
	keep(t, "added", seen, added.start(t, dir))

	removed := added
	removed.chains = []string{"e=test", "a=test", "c=test|test", "f=test|testb"}
	removed.binds = []string{"e", "a", "c", "f"}
	removed.opts = map[string]metadata.Args{"e": {"key": {"99"}}, "a": {"key": {"7"}}}
	keep(t, "removed", seen, removed.start(t, dir))

	changed := removed
	changed.opts = map[string]metadata.Args{"e": {"key": {"99"}}, "a": {"key": {"70"}}, "c": {"1.key": {"5"}}}
	keep(t, "changed options", seen, changed.start(t, dir))

	back := added
	keep(t, "back", seen, back.start(t, dir))
	if len(seen) != 8 {
		t.Errorf("%d slots seen, want 8: %v", len(seen), seen)
	}
	// Slots that shared a child at the first start still share a key,
	// those that did not never do.
	a, b0, b1, c0, c1 := seen[slot{"a", 0, "test"}], seen[slot{"b", 0, "testb"}], seen[slot{"b", 1, "test"}], seen[slot{"c", 0, "test"}], seen[slot{"c", 1, "test"}]
	if b1 != c0 || c0 != c1 || a == c0 || b0 == c0 || a == b0 {
		t.Errorf("keys: a %s, b %s %s, c %s %s", a, b0, b1, c0, c1)
	}
}

// A bridge upgraded from the naming by indexes, <program>-<plugin>-<child>,
// keeps each directory, and so its keys, when its torrc is unchanged; from
// then on the record keeps them through edits.
func TestServerStateDirsFromIndexNames(t *testing.T) {
	dir, testptb := t.TempDir(), secondProgram(t)
	l := layout{
		plugins: []string{"test=" + testpt, "testb=" + testptb},
		chains:  []string{"b=testb|test", "a=test"},
		binds:   []string{"b", "a"},
		opts:    map[string]metadata.Args{"a": {"key": {"7"}}},
	}
	// The old server made its children in the order of the slots: b's
	// hop 0 (plugin 1), b's hop 1 (plugin 0), a's hop 0 (plugin 0, other
	// options than b's hop 1).
	old := map[slot]string{
		{"b", 0, "testb"}: "testptb-1-0",
		{"b", 1, "test"}:  "testpt-0-1",
		{"a", 0, "test"}:  "testpt-0-2",
	}
	for _, d := range old {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, d, keyFile), []byte("old "+d), 0o600)
	}
	got := l.start(t, dir)
	for sl, d := range old {
		if got[sl] != "old "+d {
			t.Errorf("%v runs with key %q, want the one of %s", sl, got[sl], d)
		}
	}
	l.binds = []string{"a", "b"}
	l.plugins = []string{"testb=" + testptb, "test=" + testpt}
	for sl, k := range l.start(t, dir) {
		if k != "old "+old[sl] {
			t.Errorf("after reordering, %v runs with key %q, want the one of %s", sl, k, old[sl])
		}
	}
}

// A record that cannot be read stops the start, naming the file: guessing
// would publish new certs.
func TestServerStateDirsBadRecord(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, stateDirsFile), []byte("{"), 0o600)
	var cfg Config
	cfg.AddPluginFlag("test=" + testpt)
	srv := NewServer(ServerOptions{Config: &cfg, StateDir: dir, TorORPort: "127.0.0.1:1"})
	defer srv.Close()
	_, err := srv.Start(context.Background(), []Bind{{Alias: "test", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
	if err == nil || !strings.Contains(err.Error(), stateDirsFile) {
		t.Errorf("Start with a broken record: %v", err)
	}
	if len(srv.Processes()) != 0 {
		t.Error("children started")
	}
}

// Without its record, or with a record that lacks a slot, each slot finds
// its directory by its name, as the docs tell an operator who lost the file.
func TestServerStateDirsLostRecord(t *testing.T) {
	dir, testptb := t.TempDir(), secondProgram(t)
	l := layout{
		plugins: []string{"test=" + testpt, "testb=" + testptb},
		chains:  []string{"a=test", "b=testb|test"},
		binds:   []string{"a", "b"},
		opts:    map[string]metadata.Args{"a": {"key": {"7"}}},
	}
	seen := map[slot]string{}
	keep(t, "first start", seen, l.start(t, dir))
	record := filepath.Join(dir, stateDirsFile)
	if err := os.Remove(record); err != nil {
		t.Fatal(err)
	}
	l.binds = []string{"b", "a"}
	keep(t, "without the record", seen, l.start(t, dir))
	// A record that knows only a's slot.
	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	var f stateDirsFileV1
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	f.Slots = slices.DeleteFunc(f.Slots, func(e stateDirEntry) bool { return e.Alias != "a" })
	b, _ = json.Marshal(f)
	os.WriteFile(record, b, 0o600)
	keep(t, "with a partial record", seen, l.start(t, dir))
	if len(seen) != 3 {
		t.Errorf("slots: %v", seen)
	}
}
