package chain

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// idTor stands for the bridge's tor in the attribution tests: for every
// stream it checks that USERADDR is the address the stream names in its
// first line ("ID <addr>\n", the client's own socket as it dialled), then
// echoes the rest.
type idTor struct {
	addr, cookiePath string

	streams, misattributed, broken atomic.Int64
	mu                             sync.Mutex
	problems                       []string
}

func startIDTor(t *testing.T) *idTor {
	t.Helper()
	it := &idTor{}
	it.addr, it.cookiePath = serveTor(t, it.serve)
	return it
}

func (it *idTor) problem(counter *atomic.Int64, format string, args ...any) {
	counter.Add(1)
	it.mu.Lock()
	defer it.mu.Unlock()
	if len(it.problems) < 10 {
		it.problems = append(it.problems, fmt.Sprintf(format, args...))
	}
}

func (it *idTor) serve(c net.Conn, cookie []byte) {
	meta, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie, Timeout: 30 * time.Second})
	if err != nil || extorport.Okay(c) != nil {
		return
	}
	it.streams.Add(1)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	id, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "ID ")
	switch {
	case err != nil || !ok:
		it.problem(&it.broken, "stream of USERADDR %s starts with %q (%v)", meta.UserAddr, line, err)
		return
	case id != meta.UserAddr:
		it.problem(&it.misattributed, "USERADDR %s for the stream of %s", meta.UserAddr, id)
	}
	c.Write([]byte(line))
	io.Copy(c, br)
}

// checkAll checks that every one of total connections went through and
// reached tor attributed to its own client.
func (it *idTor) checkAll(t *testing.T, total int, failures []string) {
	t.Helper()
	t.Log(it.summary())
	if len(failures) > 0 {
		t.Errorf("%d of %d connections failed; first: %q", len(failures), total, failures[:min(5, len(failures))])
	}
	if it.misattributed.Load()+it.broken.Load() > 0 || it.streams.Load() != int64(total) {
		t.Errorf("want %d streams, all attributed: %s", total, it.summary())
	}
}

func (it *idTor) summary() string {
	it.mu.Lock()
	defer it.mu.Unlock()
	return fmt.Sprintf("tor saw %d streams, %d misattributed, %d broken; first problems: %q",
		it.streams.Load(), it.misattributed.Load(), it.broken.Load(), it.problems)
}

// testptConn is a client's connection through a chain of test PT hops, as
// the test PT's client side writes it: the outermost hop's header in
// clear, each inner hop's header under the keys of the hops outside it,
// then the payload under every key (test/testpt).
type testptConn struct {
	conn *net.TCPConn
	key  byte // the XOR of every hop's key
}

// dialTestPT dials addr and opens a chain of len(keys) test PT hops, with
// keys[i] for hop i (innermost first).
func dialTestPT(addr string, keys []byte) (*testptConn, error) {
	methods := make([]string, len(keys))
	for i := range methods {
		methods[i] = "test"
	}
	return dialTestPTMethods(addr, methods, keys)
}

// dialTestPTMethods is dialTestPT for hops of the test PT's methods, hop i
// of methods[i] with keys[i].
func dialTestPTMethods(addr string, methods []string, keys []byte) (*testptConn, error) {
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := &testptConn{conn: raw.(*net.TCPConn)}
	var headers []byte
	for i := len(keys) - 1; i >= 0; i-- {
		headers = append(headers, xored([]byte(fmt.Sprintf("TESTPT1 %s %d\n", methods[i], keys[i])), c.key)...)
		c.key ^= keys[i]
	}
	if _, err := c.conn.Write(headers); err != nil {
		c.conn.Close()
		return nil, err
	}
	return c, nil
}

func xored(b []byte, key byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[i] = b[i] ^ key
	}
	return out
}

func (c *testptConn) Write(b []byte) (int, error) { return c.conn.Write(xored(b, c.key)) }

func (c *testptConn) Read(b []byte) (int, error) {
	n, err := c.conn.Read(b)
	copy(b, xored(b[:n], c.key))
	return n, err
}

// attributed opens one connection through a chain of test PT hops, sends
// its own address as the first line and random bytes after it, and checks
// the echo.
func attributed(addr string, keys []byte, size int, within time.Duration) error {
	c, err := dialTestPT(addr, keys)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	c.conn.SetDeadline(time.Now().Add(within))
	return c.echo(c.idLine(), size)
}

// idLine is the first line a stream sends: the client's own address.
func (c *testptConn) idLine() string { return "ID " + c.conn.LocalAddr().String() + "\n" }

// echo sends prefix and size random bytes through c and checks that the
// same bytes come back.
func (c *testptConn) echo(prefix string, size int) error { return echoThrough(c, prefix, size) }

// echoThrough sends prefix and size random bytes through rw and checks
// that the same bytes come back.
func echoThrough(rw io.ReadWriter, prefix string, size int) error {
	payload := make([]byte, size)
	rand.Read(payload)
	payload = append([]byte(prefix), payload...)
	go rw.Write(payload)
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(rw, got); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo differs")
	}
	return nil
}

// testServer is a Server of test PT chains towards tor, in this process.
type testServer struct {
	srv  *Server
	pubs map[string]Published
	logs *logBuf
}

// startTestServer runs chains ("alias=test|test") of the test PT with
// ServerTransportOptions opts (by alias) under opt's timeouts.
func startTestServer(t *testing.T, opt ServerOptions, opts map[string]metadata.Args, chains ...string) *testServer {
	t.Helper()
	cfg := &Config{ServerOptions: opts}
	if err := cfg.AddPluginFlag("test=" + testpt); err != nil {
		t.Fatal(err)
	}
	ts, pubs := startServerConfig(t, cfg, opt, addChains(t, cfg, nil, chains...))
	for _, p := range pubs {
		if p.Err != nil {
			t.Fatalf("%s: %v", p.Alias, p.Err)
		}
	}
	return ts
}

// runLoad runs total calls of one at the given concurrency and returns the
// failures.
func runLoad(total, workers int, one func(i int) error) []string {
	jobs := make(chan int)
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := one(i); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("conn %d: %v", i, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range total {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return failures
}

// raceCase is one chain of the attribution race: its keys, innermost
// first, and the server children it must run on.
type raceCase struct {
	name     string
	keys     []byte
	children int
}

// The attribution race cases: two hops on two children, and two hops of
// one chain on one child (same options: the stamps of both positions
// differ only in the dialled address).
var raceCases = []raceCase{
	{name: "t2", keys: []byte{21, 22}, children: 2},
	{name: "tt", keys: []byte{23, 23}, children: 1},
}

// attributionRace runs total connections at the given concurrency through
// rc's chain, whose test PT servers wait up to 30 ms at random before they
// report on their Extended ORPort (so reports reorder), and returns tor's
// view and the failed connections.
func attributionRace(t *testing.T, rc raceCase, total, workers int, within time.Duration) (*idTor, []string) {
	t.Helper()
	tor := startIDTor(t)
	opts := metadata.Args{"delay": {"30"}}
	for i, k := range rc.keys {
		opts[strconv.Itoa(i)+".key"] = []string{strconv.Itoa(int(k))}
	}
	ts := startTestServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath},
		map[string]metadata.Args{rc.name: opts}, rc.name+"=test|test")
	if n := len(ts.srv.Processes()); n != rc.children {
		t.Fatalf("%s runs on %d children, want %d", rc.name, n, rc.children)
	}
	addr := ts.pubs[rc.name].Addr.String()
	failures := runLoad(total, workers, func(i int) error { return attributed(addr, rc.keys, 100+i%1500, within) })
	return tor, failures
}

// The attribution race at the engine: every stream reaches tor with its own
// client's address, through hops on two children and through two hops on
// one child.
func TestServerAttributionRaceEngine(t *testing.T) {
	total, workers := 1000, 100
	if testing.Short() {
		total, workers = 300, 50
	}
	for _, rc := range raceCases {
		t.Run(rc.name, func(t *testing.T) {
			tor, failures := attributionRace(t, rc, total, workers, 60*time.Second)
			tor.checkAll(t, total, failures)
		})
	}
}

// oldestPending is the historical combiner's matcher, wrong on purpose: it
// ignores the address the child reported and hands the arrival the oldest
// connection pending at that child and method.
func oldestPending(b *stampBook, st stamp, wait time.Duration) (hopLink, bool) {
	deadline := time.Now().Add(wait)
	for {
		b.mu.Lock()
		var oldest stamp
		found := false
		for s, l := range b.entries {
			if s.child == st.child && s.method == st.method && (!found || l.conn.id < b.entries[oldest].conn.id) {
				oldest, found = s, true
			}
		}
		if found {
			l := b.entries[oldest]
			delete(b.entries, oldest)
			b.mu.Unlock()
			return l, true
		}
		b.mu.Unlock()
		if time.Now().After(deadline) {
			return hopLink{}, false
		}
		time.Sleep(time.Millisecond)
	}
}

// The negative control: the attribution race, run against a server that
// matches by arrival order, must see misattributed streams; if it did not,
// its passing against the real matcher would prove nothing.
func TestServerAttributionRaceCatchesOrderMatching(t *testing.T) {
	const total, workers = 300, 50
	for _, rc := range raceCases {
		t.Run(rc.name, func(t *testing.T) {
			wrongMatcher = oldestPending
			t.Cleanup(func() { wrongMatcher = nil }) // after the server's own cleanup
			tor, failures := attributionRace(t, rc, total, workers, 15*time.Second)
			t.Logf("with the order matcher: %d of %d connections failed; %s", len(failures), total, tor.summary())
			if tor.misattributed.Load() == 0 {
				t.Errorf("the race test did not catch a server that matches by arrival order: %s", tor.summary())
			}
		})
	}
}
