package transport

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// TestBuiltinClientArgs: the in-process clients' connection settings, good
// and bad. A good set reaches the network (here a DialFunc that refuses);
// a bad one is refused before, with a reason naming the argument.
func TestBuiltinClientArgs(t *testing.T) {
	cert := startServer(t, "obfs4", nil).ClientArgs()
	certValue, _ := cert.Get("cert")
	for _, tc := range []struct {
		method, args string
		want         string // "" means the args are good
	}{
		{"obfs2", "", ""},
		{"obfs3", "", ""},
		{"obfs3", "anything=1", ""},
		{"obfs2", "shared-secret=x", "shared-secret"},
		{"obfs4", "cert=" + certValue + ";iat-mode=0", ""},
		{"obfs4", "cert=" + certValue + ";iat-mode=2", ""},
		{"obfs4", "", "missing argument 'cert'"},
		{"obfs4", "iat-mode=0", "missing argument 'cert'"},
		{"obfs4", "cert=" + certValue, "iat-mode"},
		{"obfs4", "cert=" + certValue + ";iat-mode=3", `iat-mode must be 0, 1 or 2, not "3"`},
		{"obfs4", "cert=" + certValue + ";iat-mode=x", `iat-mode must be 0, 1 or 2, not "x"`},
		{"obfs4", "cert=AAAA;iat-mode=0", "cert"},
		{"obfs4", "cert=!!;iat-mode=0", "cert"},
		{"obfs4", "node-id=zz;public-key=00;iat-mode=0", "encoding/hex"},
		{"scramblesuit", "", "password"},
		{"scramblesuit", "password=short", "password"},
		{"scramblesuit", "password=ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ""},
	} {
		t.Run(tc.method+":"+tc.args, func(t *testing.T) {
			args, err := metadata.ParseClientArgs(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			_, err = builtinDialers(t)[tc.method].Dial(context.Background(), args, "192.0.2.1:1", noNetwork)
			switch {
			case tc.want == "" && !errors.Is(err, errNoNetwork):
				t.Errorf("good args: %v, want the dial to reach the network", err)
			case tc.want != "" && (err == nil || errors.Is(err, errNoNetwork) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("bad args: %v, want an error about %q", err, tc.want)
			case err != nil && !strings.HasPrefix(err.Error(), tc.method+": "):
				t.Errorf("error %q does not name the method", err)
			}
		})
	}
}

// FuzzBuiltinClientArgs: no connection settings make a client panic, and
// every refusal names the method.
func FuzzBuiltinClientArgs(f *testing.F) {
	for _, s := range []string{"", "cert=AAAA;iat-mode=0", "node-id=00;public-key=00;iat-mode=1",
		"password=ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "iat-mode=-1", "cert=;iat-mode=", "shared-secret=1"} {
		f.Add(s)
	}
	dialers := builtinDialers(f)
	f.Fuzz(func(t *testing.T, s string) {
		args, err := metadata.ParseClientArgs(s)
		if err != nil {
			return
		}
		for method, d := range dialers {
			_, err := d.Dial(context.Background(), args, "192.0.2.1:1", noNetwork)
			if err == nil {
				t.Fatalf("%s dialled with no network", method)
			}
			if !strings.HasPrefix(err.Error(), method+": ") {
				t.Fatalf("%s: error %q does not name the method", method, err)
			}
		}
	})
}

// TestBuiltinStartErrors: what cannot start says why, at start.
func TestBuiltinStartErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  ClientConfig
		want string
	}{
		{"no methods", ClientConfig{}, "no builtin method"},
		{"unknown", ClientConfig{Methods: []string{"obfs5"}}, `no builtin method "obfs5"`},
		{"scramblesuit without state", ClientConfig{Methods: []string{"scramblesuit"}}, "needs a state directory"},
	} {
		if _, err := BuiltinClient().Start(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := BuiltinServer("scramblesuit"); err == nil || !strings.Contains(err.Error(), "no server side") {
		t.Errorf("scramblesuit server: %v", err)
	}
	if _, err := BuiltinServer("meek_lite"); err == nil || !strings.Contains(err.Error(), `no builtin method "meek_lite"`) {
		t.Errorf("meek_lite server: %v", err)
	}
	if got := BuiltinMethods(true); strings.Join(got, ",") != "obfs2,obfs3,obfs4" {
		t.Errorf("server methods %v", got)
	}
}

// TestObfs4ServerState: the state is generated once and kept (the same
// cert on every start), options override the iat-mode, and bad options or
// a malformed state file are refused with the file named.
func TestObfs4ServerState(t *testing.T) {
	ctx := context.Background()
	st, err := BuiltinServer("obfs4")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	start := func(opts string) (Server, error) {
		o, err := metadata.ParseClientArgs(opts)
		if err != nil {
			t.Fatal(err)
		}
		return st.Start(ctx, ServerConfig{StateDir: dir, Options: o})
	}
	first, err := start("")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, %v", fi, err)
	}
	again, err := start("iat-mode=1")
	if err != nil {
		t.Fatal(err)
	}
	c1, _ := first.ClientArgs().Get("cert")
	c2, _ := again.ClientArgs().Get("cert")
	if c1 == "" || c1 != c2 {
		t.Errorf("cert changed across starts: %q, %q", c1, c2)
	}
	if m, _ := again.ClientArgs().Get("iat-mode"); m != "1" {
		t.Errorf("iat-mode option gave iat-mode=%q", m)
	}
	for _, bad := range []struct{ opts, want string }{
		{"iat-mode=x", "iat-mode"},
		{"iat-mode=7", "iat-mode"},
		{"node-id=00", "private-key"},
	} {
		if _, err := start(bad.opts); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("options %q: %v, want %q", bad.opts, err, bad.want)
		}
	}
	stateFile := filepath.Join(dir, "obfs4_state.json")
	for _, bad := range []string{"", "{", `{"node-id":"zz"}`, `{"node-id":"` + strings.Repeat("00", 20) + `","private-key":"00","drbg-seed":"00"}`} {
		if err := os.WriteFile(stateFile, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := start("")
		if err == nil || !strings.Contains(err.Error(), "malformed") || !strings.Contains(err.Error(), stateFile) {
			t.Errorf("state %q: %v, want the file named as malformed", bad, err)
		}
	}
	if _, err := st.Start(ctx, ServerConfig{}); err == nil || !strings.Contains(err.Error(), "needs a state directory") {
		t.Errorf("no state dir: %v", err)
	}
}
