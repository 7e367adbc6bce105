package chain

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// exactTrip sends size random bytes through conn and checks that exactly
// those bytes come back. With halfClose it half-closes conn after them
// and reads to the end of the stream (echoTor echoes until it sees the
// half-close, then closes); without, it reads size bytes: obfs4proxy, like
// most PTs, closes both directions at the first EOF.
func exactTrip(conn transport.Conn, size int, halfClose bool) error {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	data := make([]byte, size)
	rand.Read(data)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		if err == nil && halfClose {
			err = conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	var got []byte
	var err error
	if halfClose {
		got, err = io.ReadAll(conn)
	} else {
		got = make([]byte, size)
		var n int
		n, err = io.ReadFull(conn, got)
		got = got[:n]
	}
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("sent %d bytes, got %d back, not the same", size, len(got))
	}
	return nil
}

// roundTrips runs exactTrip at each size through alias of ts with client
// d, and checks that tor heard each connection's own address and the
// alias.
func roundTrips(t *testing.T, ts *testServer, tor *echoTor, alias string, d transport.Dialer, sizes []int, halfClose bool) {
	t.Helper()
	for _, size := range sizes {
		if size == 0 && !halfClose {
			continue // nothing would show that the stream reached tor
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, local, err := dialChain(ctx, d, ts.pubs[alias], nil)
		cancel()
		if err != nil {
			t.Fatalf("%s: dial: %v", alias, err)
		}
		if err := exactTrip(conn, size, halfClose); err != nil {
			t.Fatalf("%s, %d bytes: %v", alias, size, err)
		}
		if m := tor.last(); m.UserAddr != local || m.Transport != alias {
			t.Errorf("%s: tor heard USERADDR %s TRANSPORT %s, want %s %s", alias, m.UserAddr, m.Transport, local, alias)
		}
	}
}

func (e *echoTor) last() extorport.Meta {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.metas) == 0 {
		return extorport.Meta{}
	}
	return e.metas[len(e.metas)-1]
}

var exactSizes = []int{0, 1, 1000, 65537, 1 << 20}

// Chains of in-process hops only start no child: the engine wraps the
// public connection with the outermost hop, then the next, and hands the
// result to tor with the client's own address and the alias, byte-exact
// both ways, half-close included. Per-hop options reach the in-process
// hops (hop 1's iat-mode), and obfs4's state lives in the slot's recorded
// directory.
func TestServerInProcessChains(t *testing.T) {
	tor := startEchoTor(t)
	cfg, binds := hopsConfig(t, map[string]metadata.Args{"o4o4": {"1.iat-mode": {"1"}}},
		"--builtin", "obfs3,obfs4", "--chain", "o3o4=obfs3|obfs4", "--chain", "o4o4=obfs4|obfs4")
	ts, _ := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath}, binds)
	if n := len(ts.srv.Processes()); n != 0 {
		t.Fatalf("a chain of in-process hops started %d processes", n)
	}
	args := ts.pubs["o4o4"].Args
	if v, _ := args.Get("1.iat-mode"); v != "1" {
		t.Errorf("o4o4 publishes %v: hop 1's iat-mode option did not reach it", args)
	}
	if v, _ := args.Get("0.iat-mode"); v != "0" {
		t.Errorf("o4o4 publishes %v: hop 0 has no option", args)
	}
	for alias, methods := range map[string][]string{"o3o4": {"obfs3", "obfs4"}, "o4o4": {"obfs4", "obfs4"}} {
		roundTrips(t, ts, tor, alias, clientFor(t, methods...), exactSizes, true)
	}
	state := filepath.Join(ts.srv.opt.StateDir, "builtin-o4o4-1", "obfs4_state.json")
	if _, err := os.Stat(state); err != nil {
		t.Errorf("hop 1's obfs4 state: %v", err)
	}
	if cookies, _ := filepath.Glob(filepath.Join(ts.srv.opt.StateDir, "extended_orport_auth_cookie*")); len(cookies) > 0 {
		t.Errorf("a server without children wrote Extended ORPort cookies for them: %v", cookies)
	}
	var record stateDirsFileV1
	b, _ := os.ReadFile(filepath.Join(ts.srv.opt.StateDir, stateDirsFile))
	if err := json.Unmarshal(b, &record); err != nil || len(record.Slots) != 4 {
		t.Errorf("state-dirs.json: %s (%v), want the 4 slots", b, err)
	}
}

// Mixed chains: in-process obfs3 inside obfs4proxy's obfs4 (an in-process
// hop wraps a child's Extended ORPort arrival after OKAY), and obfs4proxy's
// obfs3 inside in-process obfs4 (the engine dials the child with the
// unwrapped stream, and attributes its arrival by the stamp).
func TestServerInProcessMixed(t *testing.T) {
	obfs4proxy := needObfs4proxy(t)
	for _, tc := range []struct {
		name, builtin, plugin string
	}{
		{"builtin obfs3 inside obfs4proxy", "obfs3", "obfs4=" + obfs4proxy},
		{"obfs4proxy inside builtin obfs4", "obfs4", "obfs3=" + obfs4proxy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tor := startEchoTor(t)
			cfg, binds := hopsConfig(t, nil, "--builtin", tc.builtin, "--plugin", tc.plugin, "--chain", "m=obfs3|obfs4")
			ts, _ := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath}, binds)
			if n := len(ts.srv.Processes()); n != 1 {
				t.Fatalf("%d processes, want obfs4proxy alone", n)
			}
			roundTrips(t, ts, tor, "m", clientFor(t, "obfs3", "obfs4"), exactSizes, false)
			if n := ts.srv.PendingStamps(); n != 0 {
				t.Errorf("%d stamps left", n)
			}
		})
	}
}

// What a bridge cannot serve in process fails the chain at Start with the
// reason, and starts nothing for it: a builtin that does not exist, one
// without a server side, an unmanaged SOCKS PT (client-side only), and
// malformed obfs4 state in the slot's directory.
func TestServerInProcessStartErrors(t *testing.T) {
	state := t.TempDir()
	bad := filepath.Join(state, "builtin-broken-0")
	if err := os.MkdirAll(bad, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "obfs4_state.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, binds := hopsConfig(t, nil, "--builtin", "obfs4,nosuch,scramblesuit", "--plugin", "test="+testpt,
		"--plugin", "sx=socks5:127.0.0.1:9",
		"--chain", "unknown=test|nosuch", "--chain", "nosrv=scramblesuit", "--chain", "socks=test|sx",
		"--chain", "broken=obfs4", "--chain", "good=obfs4")
	ts, pubs := startServerConfig(t, cfg, ServerOptions{StateDir: state, TorORPort: "127.0.0.1:1"}, binds)
	want := map[string][]string{
		"unknown": {`hop 1 "nosuch"`, `no builtin method "nosuch"`},
		"nosrv":   {`hop 0 "scramblesuit"`, "has no server side"},
		"socks":   {`hop 1 "sx"`, "client-side", "--builtin sx"},
		"broken":  {"hop 0 (obfs4)", "malformed", filepath.Join(bad, "obfs4_state.json")},
	}
	for _, p := range pubs {
		parts, bad := want[p.Alias]
		switch {
		case !bad && p.Err != nil:
			t.Errorf("%s: %v", p.Alias, p.Err)
		case bad && p.Err == nil:
			t.Errorf("%s started", p.Alias)
		case bad:
			for _, part := range parts {
				if !strings.Contains(p.Err.Error(), part) {
					t.Errorf("%s: %v, want %q in it", p.Alias, p.Err, part)
				}
			}
			if p.Addr != nil {
				t.Errorf("%s listens on %v", p.Alias, p.Addr)
			}
		}
	}
	if n := len(ts.srv.Processes()); n != 0 {
		t.Errorf("%d processes started for chains that cannot run", n)
	}
	if b, _ := os.ReadFile(filepath.Join(bad, "obfs4_state.json")); string(b) != "{not json" {
		t.Errorf("the malformed state was overwritten: %q", b)
	}
}
