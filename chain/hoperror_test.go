package chain

import (
	"context"
	"errors"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
)

// startClient runs a Client of cfg with names started; it ends with the test.
func startClient(t *testing.T, cfg *Config, setupTimeout time.Duration, names ...string) *Client {
	t.Helper()
	logs := &logBuf{}
	cli := NewClient(ClientOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(logs), SetupTimeout: setupTimeout})
	t.Cleanup(func() {
		cli.Close()
		if t.Failed() {
			t.Logf("logs: %s", logs.digest(15))
		}
	})
	for name, err := range cli.Start(context.Background(), names) {
		if err != nil {
			t.Fatalf("client %s: %v", name, err)
		}
	}
	return cli
}

// A hop error says which PT program, at which SOCKS address, was asked to
// reach what: the bridge for the outermost hop; for an inner hop, the
// bridge through the next hop's shim. The SOCKS reply code is kept.
func TestHopErrorNamesPTAndTarget(t *testing.T) {
	cli := startClient(t, testConfig(t), 0, "t2", "t3")
	pt := regexp.QuoteMeta(testpt)
	for _, tc := range []struct {
		name, chain string
		target      string
		args        metadata.Args
		hop         int
		code        byte
		want        string // the whole message
	}{
		{"outer hop", "t2", "127.0.0.1:1", nil, 1, shim.RepConnectionRefused,
			`^chain t2: hop 1 \(test, ` + pt + ` at 127\.0\.0\.1:\d+\) could not reach 127\.0\.0\.1:1: socks5: connection refused \(0x05\)$`},
		{"inner hop", "t2", "192.0.2.10:443", metadata.Args{"0.key": {"999"}}, 0, shim.RepGeneralFailure,
			`^chain t2: hop 0 \(test, ` + pt + ` at 127\.0\.0\.1:\d+\) could not reach 192\.0\.2\.10:443 through hop 1's shim 127\.0\.0\.1:\d+: socks5: general SOCKS server failure \(0x01\)$`},
		// Hop 0 has granted by then (the test PT grants once it has
		// reached its target); the failure still ends the setup at once,
		// not at the setup timeout (60 s, beyond the ctx below).
		{"middle hop", "t3", "192.0.2.10:443", metadata.Args{"1.key": {"999"}}, 1, shim.RepGeneralFailure,
			`^chain t3: hop 1 \(test, ` + pt + ` at 127\.0\.0\.1:\d+\) could not reach 192\.0\.2\.10:443 through hop 2's shim 127\.0\.0\.1:\d+: socks5: general SOCKS server failure \(0x01\)$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := cli.Dial(ctx, tc.chain, tc.target, tc.args)
			var he *HopError
			if !errors.As(err, &he) || he.Hop != tc.hop || he.ReplyCode() != tc.code {
				t.Fatalf("Dial: %v; want hop %d with reply 0x%02x", err, tc.hop, tc.code)
			}
			if !regexp.MustCompile(tc.want).MatchString(err.Error()) {
				t.Errorf("message:\n%s\nwant it to match\n%s", err, tc.want)
			}
		})
	}
}

// neverConnects is the config of chains whose hop 0, testbad, grants every
// SOCKS request without connecting to its target (the test PT's
// ignore-target mode), as an indirect PT placed first would.
func neverConnects(t *testing.T) *Config {
	t.Helper()
	cfg, err := Parse(strings.NewReader(
		"ClientTransportPlugin testbad exec "+testpt+" -mode ignore-target\n"+
			"ClientTransportPlugin test exec "+testpt+"\n"+
			"Alias bad2 testbad|test\n"+
			"Alias bad3 testbad|test|test\n"), "test config", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A hop that never connects to the next hop's shim is the one named, with
// the time really waited, not the hops after it, which were never asked.
func TestHopThatNeverConnectsIsNamed(t *testing.T) {
	const setupTimeout = time.Second
	cli := startClient(t, neverConnects(t), setupTimeout, "bad2", "bad3")
	waited := regexp.MustCompile(`it never connected to that shim in ([0-9.]+m?s)`)
	for _, alias := range []string{"bad2", "bad3"} {
		t.Run(alias, func(t *testing.T) {
			_, err := cli.Dial(context.Background(), alias, "192.0.2.10:443", nil)
			var he *HopError
			if !errors.As(err, &he) || he.Hop != 0 || he.Method != "testbad" || he.ReplyCode() != shim.RepTTLExpired {
				t.Fatalf("Dial: %v; want hop 0 (testbad) with reply TTL expired", err)
			}
			m := waited.FindStringSubmatch(err.Error())
			if m == nil || !strings.Contains(err.Error(), "through hop 1's shim") {
				t.Fatalf("message does not say that hop 0 never connected to hop 1's shim: %v", err)
			}
			// The wait cannot end before the setup's deadline; the default
			// timeout (60 s) would show a figure far above the test's.
			if d, perr := time.ParseDuration(m[1]); perr != nil || d < setupTimeout || d >= DefaultSetupTimeout {
				t.Errorf("waited %q: want the real time waited, at least %v", m[1], setupTimeout)
			}
		})
	}
}

// The caller's ctx bounds the setup too, and the error says so, with the
// time waited, instead of blaming a hop.
func TestDialCallerCancels(t *testing.T) {
	cli := startClient(t, neverConnects(t), time.Minute, "bad2")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := cli.Dial(ctx, "bad2", "192.0.2.10:443", nil)
		done <- err
	}()
	select {
	case err := <-done:
		var he *HopError
		if !errors.As(err, &he) || he.Hop != -1 || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "setup abandoned after") {
			t.Errorf("Dial: %v; want the setup abandoned with the caller's deadline", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Dial ignored its ctx: still setting up 30 s after it ended (setup timeout 1 min)")
	}
}

// An indirect method anywhere but last is refused at Start, before any
// program runs, and by Dial; last, or configured as indirect, it is judged
// by the same rule.
func TestIndirectPlacement(t *testing.T) {
	cfg, err := Parse(strings.NewReader(
		"ClientTransportPlugin meek_lite,obfs4,testx,test exec "+testpt+"\n"+
			"Indirect testx\n"+
			"Alias ml meek_lite|obfs4\n"+
			"Alias tx test|testx|test\n"+
			"Alias last test|meek_lite\n"), "test config", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	for alias, want := range map[string]string{
		"ml":   `hop 0 "meek_lite" is an indirect PT`,
		"tx":   `hop 1 "testx" is an indirect PT`,
		"last": "",
	} {
		ch, _ := cfg.Lookup(alias)
		err := cfg.CheckPlacement(ch)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckPlacement(%s) = %v, want %q", ch, err, want)
		}
	}
	cli := NewClient(ClientOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(&logBuf{})})
	defer cli.Close()
	res := cli.Start(context.Background(), []string{"ml", "tx"})
	for alias, want := range map[string]string{"ml": "meek_lite", "tx": "testx"} {
		if err := res[alias]; err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "only be the last hop") {
			t.Errorf("Start(%s) = %v, want a refusal naming %s", alias, err, want)
		}
	}
	if pids := cli.Processes(); len(pids) != 0 {
		t.Errorf("refused chains started programs: %v", pids)
	}
	if _, err := cli.Dial(context.Background(), "ml", "192.0.2.10:443", nil); err == nil || !strings.Contains(err.Error(), "indirect PT") {
		t.Errorf("Dial(ml) = %v, want the refusal", err)
	}
	if pids := cli.Processes(); len(pids) != 0 {
		t.Errorf("Dial of a refused chain started programs: %v", pids)
	}
}

// --indirect adds to the known methods, comma separated; names are C
// identifiers.
func TestAddIndirectFlag(t *testing.T) {
	var c Config
	if err := c.AddIndirectFlag("dnstt,myfront"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"dnstt", "myfront", "snowflake", "meek_lite", "webtunnel"} {
		if !c.IsIndirect(m) {
			t.Errorf("%s is not indirect", m)
		}
	}
	if c.IsIndirect("obfs4") {
		t.Error("obfs4 is indirect")
	}
	if err := c.AddIndirectFlag("a-b"); err == nil {
		t.Error("--indirect a-b accepted")
	}
}

// On the bridge too an indirect PT's server can only be outermost: the chain
// gets its SMETHOD-ERROR at start and no program runs for it.
func TestServerIndirectPlacement(t *testing.T) {
	cfg, err := Parse(strings.NewReader(
		"ServerTransportPlugin snowflake,test exec "+testpt+"\n"+
			"Alias sf snowflake|test\n"), "test config", ServerRole)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerOptions{Config: cfg, StateDir: t.TempDir(), Logger: newLogger(&logBuf{}), TorORPort: "127.0.0.1:1"})
	defer srv.Close()
	pub, err := srv.Start(context.Background(), []Bind{{Alias: "sf", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pub) != 1 || pub[0].Err == nil || !strings.Contains(pub[0].Err.Error(), `hop 0 "snowflake" is an indirect PT`) {
		t.Fatalf("Start(sf) = %+v, want a refusal naming snowflake", pub)
	}
	if pids := srv.Processes(); len(pids) != 0 {
		t.Errorf("a refused chain started programs: %v", pids)
	}
}
