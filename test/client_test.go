package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/shim"
)

// testHops returns n server hops of the test PT, each with its own key.
func testHops(n int) []serverHop {
	hops := make([]serverHop, n)
	for i := range hops {
		hops[i] = serverHop{path: bin("testpt"), method: "test", options: metadata.Args{"key": {fmt.Sprint(11 * (i + 1))}}}
	}
	return hops
}

var testChains = []string{"--plugin", "test=" + "TESTPT", "--chain", "t2=test|test", "--chain", "t3=test|test|test"}

func testpFlags() []string {
	out := append([]string(nil), testChains...)
	out[1] = "test=" + bin("testpt")
	return out
}

// Chains of 1, 2 and 3 hops of the test PT carry data byte-exact, with each
// hop's own key: a key on the wrong hop would be refused by its server.
func TestClientTestPTChains(t *testing.T) {
	echo := echoServer(t)
	c := startCombiner(t, []string{"test", "t2", "t3"}, testpFlags()...)
	sizes := []int{0, 1, 4096, 1 << 20}
	if !testing.Short() {
		sizes = append(sizes, 64<<20)
	}
	for _, tc := range []struct {
		alias string
		hops  int
	}{{"test", 1}, {"t2", 2}, {"t3", 3}} {
		bridge, args := serverChain(t, echo, testHops(tc.hops))
		for _, size := range sizes {
			if size == 64<<20 && tc.hops != 3 {
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", tc.alias, size), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				conn, err := c.dial(ctx, tc.alias, bridge, args)
				if err != nil {
					t.Fatal(err)
				}
				if err := roundTrip(t, conn, size); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	// One test PT process serves every position of every chain.
	if kids := childPids(c.proc.Pid()); len(kids) != 1 {
		t.Errorf("ptcombiner-client runs %d children, want 1: %v", len(kids), kids)
	}
}

// requests reads the test PT's log of the SOCKS requests it received.
func requests(t *testing.T, c *combiner) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(c.stateDir, "ptcombiner", "testpt-*", "requests.log"))
	var lines []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, strings.Split(strings.TrimSpace(string(b)), "\n")...)
	}
	return lines
}

// Per-hop arguments reach exactly their hop, unprefixed ones reach every
// hop, escapes survive, and arguments over 255 bytes are split as tor does.
func TestClientPerHopArgs(t *testing.T) {
	echo := echoServer(t)
	c := startCombiner(t, []string{"t3"}, testpFlags()...)
	bridge, args := serverChain(t, echo, testHops(3))
	args.Add("shared", `a;b=c\d`)
	args.Add("1.only1", "x")
	args.Add("2.long", strings.Repeat("L", 300)) // hop 2's args exceed 255 bytes
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The whole encoded list is over 255 bytes, so tor's split applies on
	// the way in as well.
	if enc := metadata.EncodeClientArgs(args); len(enc) <= 255 || len(enc) > metadata.MaxSOCKSArgsLen {
		t.Fatalf("test args are %d bytes; want 256..510", len(enc))
	}
	conn, err := c.dial(ctx, "t3", bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, conn, 1000); err != nil {
		t.Fatal(err)
	}
	got := requests(t, c)
	sort.Strings(got)
	// Each hop's request, as the test PT logged it: <method> <target> <args>.
	var want []string
	perHop, _ := metadata.SplitHops(args, 3)
	for _, a := range perHop {
		want = append(want, metadata.EncodeClientArgs(a))
	}
	if len(got) != 3 {
		t.Fatalf("test PT saw %d requests, want 3: %q", len(got), got)
	}
	for i, w := range want {
		found := false
		for _, line := range got {
			f := strings.SplitN(line, " ", 3)
			if len(f) == 3 && f[2] == w {
				found = true
				if i == 2 && f[1] != bridge {
					t.Errorf("hop 2 was asked for %s, want the bridge %s", f[1], bridge)
				}
			}
		}
		if !found {
			t.Errorf("hop %d's args %q not seen; requests: %q", i, w, got)
		}
	}
	for _, line := range got {
		if strings.Contains(line, "only1") && !strings.Contains(line, "key=22") {
			t.Errorf("1.only1 reached the wrong hop: %q", line)
		}
	}
}

// A chain of obfs4proxy's transports against matching obfs4proxy servers.
func TestClientObfs4proxyChains(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	echo := echoServer(t)
	flags := []string{"--plugin", "obfs2,obfs3,obfs4=" + obfs4proxy,
		"--chain", "obfs3_obfs4=obfs3|obfs4", "--chain", "obfs4_obfs4=obfs4|obfs4", "--chain", "o234=obfs2|obfs3|obfs4"}
	c := startCombiner(t, []string{"obfs4", "obfs3_obfs4", "obfs4_obfs4", "o234"}, flags...)
	// Only chains with obfs3 inside obfs4 meet obfs4proxy's stall (1-4% of
	// setups, PROTOCOLS.md), and only they are retried: at most one retry
	// per four cases in all, or the test fails.
	budget := newRetryBudget(t, "obfs4proxy's stall on obfs3 inside obfs4", 0.25)
	for _, tc := range []struct {
		alias string
		hops  []string
		sizes []int
		stall bool // obfs3 inside obfs4
	}{
		{"obfs4", []string{"obfs4"}, []int{0, 1, 1 << 20, 64 << 20}, false},
		{"obfs3_obfs4", []string{"obfs3", "obfs4"}, []int{0, 1 << 20}, true},
		{"obfs4_obfs4", []string{"obfs4", "obfs4"}, []int{0, 1 << 20}, false},
		{"o234", []string{"obfs2", "obfs3", "obfs4"}, []int{1, 1 << 20}, true},
	} {
		var hops []serverHop
		for _, m := range tc.hops {
			hops = append(hops, serverHop{path: obfs4proxy, method: m})
		}
		bridge, args := serverChain(t, echo, hops)
		for _, size := range tc.sizes {
			if testing.Short() && size > 1<<20 {
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", tc.alias, size), func(t *testing.T) {
				attempts := 1
				if tc.stall {
					attempts = 3
				}
				err := budget.run(t, attempts, func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					conn, err := c.dial(ctx, tc.alias, bridge, args)
					if err != nil {
						return err
					}
					conn.SetDeadline(time.Now().Add(60 * time.Second))
					return roundTrip(t, conn, size)
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		}
	}
	if kids := childPids(c.proc.Pid()); len(kids) != 1 {
		t.Errorf("ptcombiner-client runs %d children for one program, want 1: %v", len(kids), kids)
	}
	pids := append(childPids(c.proc.Pid()), c.proc.Pid())
	c.proc.Close()
	if err := waitGone(pids, eventCeiling); err != nil {
		t.Error(err)
	}
}

// Two chains sharing a program and a chain using one method twice run one
// child per program: here two programs (the test PT and obfs4proxy).
func TestClientOneChildPerProgram(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	c := startCombiner(t, []string{"t2", "t3", "test", "oo", "o34"},
		"--plugin", "test="+bin("testpt"), "--plugin", "obfs3,obfs4="+obfs4proxy,
		"--chain", "t2=test|test", "--chain", "t3=test|test|test", "--chain", "oo=obfs4|obfs4", "--chain", "o34=obfs3|obfs4")
	if len(c.methods) != 5 {
		t.Fatalf("CMETHODs: %v (errors %v)", c.methods, c.errs)
	}
	kids := childPids(c.proc.Pid())
	if len(kids) != 2 {
		t.Fatalf("ptcombiner-client runs %d children, want 2: %v", len(kids), kids)
	}
	names := map[string]bool{}
	for _, k := range kids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", k))
		names[strings.TrimSpace(string(b))] = true
	}
	if !names["testpt"] || !names["obfs4proxy"] {
		t.Errorf("children: %v", names)
	}
}

// Bad configurations and bad children give a clear CMETHOD-ERROR or
// ENV-ERROR, the other chains still work, and nothing is left running.
func TestClientStartErrors(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "ptcombiner.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`
ClientTransportPlugin envfail exec %[1]s -mode env-error
ClientTransportPlugin early exec %[1]s -mode exit-before-done
ClientTransportPlugin testhang exec %[1]s -mode hang
ClientTransportPlugin test exec %[1]s
ClientTransportPlugin gone exec /nonexistent/pt
Alias ok test|test
Alias missing test|nosuch
Alias envchain test|envfail
`, bin("testpt"))), 0o600)
	c := startCombiner(t, []string{"ok", "missing", "envfail", "early", "gone", "envchain", "unknown_to_all", "testhang"},
		"--config", conf, "--start-timeout", "2s")
	if _, ok := c.methods["ok"]; !ok {
		t.Errorf("chain ok did not start: %v", c.errs)
	}
	for name, want := range map[string]string{
		"missing":  `"nosuch" is offered by no program`,
		"envfail":  "testpt was asked to fail",
		"envchain": "testpt was asked to fail",
		"early":    "exit",
		"gone":     "/nonexistent/pt",
		"testhang": "time",
	} {
		if !strings.Contains(c.errs[name], want) {
			t.Errorf("CMETHOD-ERROR %s = %q, want it to contain %q", name, c.errs[name], want)
		}
	}
	if _, ok := c.errs["unknown_to_all"]; ok {
		t.Errorf("an unknown transport got a CMETHOD-ERROR; tor's rule is to ignore it silently")
	}
	// Only the healthy child is left; the failed ones were ended.
	if kids := childPids(c.proc.Pid()); len(kids) != 1 {
		t.Errorf("children left: %v, want only the healthy test PT", kids)
	}
	pid := c.proc.Pid()
	kids := childPids(pid)
	c.proc.Close()
	if err := waitGone(append(kids, pid), eventCeiling); err != nil {
		t.Error(err)
	}
}

func TestClientBadFlags(t *testing.T) {
	for _, tc := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--chain", "a-b=test"}, `alias "a-b" is not a C identifier`},
		{[]string{"--plugin", "test"}, "want NAMES=PATH"},
		{[]string{"--plugin", "x=/a", "--plugin", "x=/b"}, "offered by two programs"},
		{[]string{"--config", "/nonexistent.conf"}, "no such file"},
	} {
		_, err := tryCombiner(t, []string{"a"}, tc.flags...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("flags %q: err = %v, want it to contain %q", tc.flags, err, tc.want)
		}
	}
}

// An unreachable bridge: the SOCKS reply says "connection refused" and the
// log names the failing hop; the chain keeps working afterwards.
func TestClientUnreachableBridge(t *testing.T) {
	echo := echoServer(t)
	c := startCombiner(t, []string{"t3"}, testpFlags()...)
	bridge, args := serverChain(t, echo, testHops(3))
	baseline := fdCount(c.proc.Pid())
	warm, err := c.dial(context.Background(), "t3", bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, warm, 10); err != nil {
		t.Fatal(err)
	}
	// The warm connection's sockets are closed before the one that fails.
	waitFDs(t, c.proc.Pid(), baseline, eventCeiling)
	// Port 1, where nothing listens: a port freed by closing a listener
	// could be handed to one of the combiner's shims meanwhile.
	const dead = "127.0.0.1:1"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = c.dial(ctx, "t3", dead, args)
	var re *shim.ReplyError
	if !errors.As(err, &re) || re.Code != shim.RepConnectionRefused {
		t.Fatalf("dial to a closed port: %v, want SOCKS reply 0x05", err)
	}
	if _, err := c.logs.waitFor(eventCeiling, "hop 2 (test, ", "could not reach", "refused"); err != nil {
		t.Error(err)
	}
	conn, err := c.dial(ctx, "t3", bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, conn, 100); err != nil {
		t.Fatal(err)
	}
	// No shim listener or socket of the failed connection is left.
	waitFDs(t, c.proc.Pid(), baseline, eventCeiling)
}

// Malformed SOCKS requests and arguments are refused without harm.
func TestClientMalformedSOCKS(t *testing.T) {
	echo := echoServer(t)
	c := startCombiner(t, []string{"t2"}, testpFlags()...)
	bridge, args := serverChain(t, echo, testHops(2))
	addr := c.methods["t2"].Addr.String()
	baseline := fdCount(c.proc.Pid())
	for _, raw := range [][]byte{
		{0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0}, // SOCKS4
		{0x05, 0x00},                                     // no methods
		{0x05, 0x01, 0x02, 0x01, 0x00},                   // empty username
		{0x05, 0x01, 0x00, 0x05, 0x02, 0x00, 0x01},       // BIND
		{0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x09, 1, 2}, // bad ATYP
		[]byte("GET / HTTP/1.0\r\n\r\n"),
	} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(raw)
		conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		buf := make([]byte, 64)
		for {
			if _, err := conn.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("request %x: the combiner neither answered nor closed", raw)
				}
				break
			}
		}
		conn.Close()
	}
	// Arguments that are not k=v, and a hop number the chain does not have.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	user, pass := []byte("nokeyvalue"), []byte{0}
	if _, err := shim.DialSOCKS5(ctx, addr, bridge, user, pass); err == nil {
		t.Error("malformed args were accepted")
	}
	bad := metadata.Args{"5.key": {"1"}}
	if _, err := c.dial(ctx, "t2", bridge, bad); err == nil {
		t.Error("args for hop 5 of a 2-hop chain were accepted")
	}
	// The chain still works.
	conn, err := c.dial(ctx, "t2", bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(t, conn, 1000); err != nil {
		t.Fatal(err)
	}
	waitFDs(t, c.proc.Pid(), baseline, eventCeiling)
}

// 1000 connections at 100 concurrency through a 3-hop chain of the test PT,
// each checked byte for byte; then every process ends with the combiner.
func TestClientLoad(t *testing.T) {
	total, workers := 1000, 100
	if testing.Short() {
		total, workers = 200, 50
	}
	echo := echoServer(t)
	c := startCombiner(t, []string{"t3"}, testpFlags()...)
	bridge, args := serverChain(t, echo, testHops(3))
	baseline := fdCount(c.proc.Pid())
	failures := runLoad(total, workers, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		conn, err := c.dial(ctx, "t3", bridge, args)
		if err != nil {
			return err
		}
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		return roundTrip(t, conn, 1000+i*37)
	})
	if len(failures) > 0 {
		t.Fatalf("%d of %d connections failed; first: %v", len(failures), total, failures[:min(5, len(failures))])
	}
	waitFDs(t, c.proc.Pid(), baseline, eventCeiling)
	pids := append(childPids(c.proc.Pid()), c.proc.Pid())
	c.proc.Close()
	if err := waitGone(pids, eventCeiling); err != nil {
		t.Error(err)
	}
}
