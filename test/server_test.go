package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
)

// fakeTor is an Extended ORPort server standing in for the bridge's tor. For
// every stream it checks that the client address announced as USERADDR is
// the one the stream itself names in its first line ("ID <addr>\n"), that
// TRANSPORT is the expected alias, and that no byte came before OKAY; then it
// echoes the rest of the stream.
type fakeTor struct {
	addr       string
	cookiePath string
	transport  string

	streams, misattributed, wrongTransport, early, corrupt atomic.Int64
	mu                                                     sync.Mutex
	problems                                               []string
}

func startFakeTor(t testing.TB, transport string) *fakeTor {
	t.Helper()
	dir := t.TempDir()
	ft := &fakeTor{cookiePath: filepath.Join(dir, "cookie"), transport: transport}
	cookie, err := extorport.WriteCookieFile(ft.cookiePath)
	if err != nil {
		t.Fatal(err)
	}
	ft.addr = serveLoopback(t, func(c *net.TCPConn) { ft.serve(c, cookie) })
	return ft
}

func (ft *fakeTor) problem(format string, args ...any) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if len(ft.problems) < 20 {
		ft.problems = append(ft.problems, fmt.Sprintf(format, args...))
	}
}

func (ft *fakeTor) serve(c *net.TCPConn, cookie []byte) {
	meta, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie, Timeout: 30 * time.Second})
	if err != nil {
		ft.problem("handshake: %v", err)
		return
	}
	ft.streams.Add(1)
	// Nothing may arrive before OKAY (tor closes such a connection).
	c.SetReadDeadline(time.Now().Add(2 * time.Millisecond))
	if n, _ := c.Read(make([]byte, 1)); n > 0 {
		ft.early.Add(1)
		ft.problem("data before OKAY from %s", meta.UserAddr)
		return
	}
	c.SetReadDeadline(time.Time{})
	if err := extorport.Okay(c); err != nil {
		return
	}
	if meta.Transport != ft.transport {
		ft.wrongTransport.Add(1)
		ft.problem("TRANSPORT %q, want %q", meta.Transport, ft.transport)
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		ft.corrupt.Add(1)
		ft.problem("reading the ID line: %v", err)
		return
	}
	id := strings.TrimSuffix(strings.TrimPrefix(line, "ID "), "\n")
	if !strings.HasPrefix(line, "ID ") {
		ft.corrupt.Add(1)
		ft.problem("stream starts with %q", line)
		return
	}
	if id != meta.UserAddr {
		ft.misattributed.Add(1)
		ft.problem("USERADDR %s for the stream of %s", meta.UserAddr, id)
	}
	c.Write([]byte(line))
	io.Copy(c, br)
	c.CloseWrite()
}

func (ft *fakeTor) check(t testing.TB, want int) {
	t.Helper()
	t.Logf("fake tor: %d streams, %d misattributed, %d wrong transport, %d data before OKAY, %d corrupt",
		ft.streams.Load(), ft.misattributed.Load(), ft.wrongTransport.Load(), ft.early.Load(), ft.corrupt.Load())
	if ft.misattributed.Load()+ft.wrongTransport.Load()+ft.early.Load()+ft.corrupt.Load() > 0 || int(ft.streams.Load()) != want {
		t.Errorf("fake tor saw %d streams (want %d); problems: %q", ft.streams.Load(), want, ft.problems)
	}
}

// serverCombiner is ptcombiner-server run by a tor-like parent.
type serverCombiner struct {
	proc    *ptproc.Process
	methods map[string]ptproc.Smethod
	errs    map[string]string
	logs    *logSink
}

func startServerCombiner(t testing.TB, ft *fakeTor, aliases []string, opts map[string]metadata.Args, flags ...string) *serverCombiner {
	t.Helper()
	logs := &logSink{}
	spec := ptproc.Spec{
		Name:     "ptcombiner-server",
		Path:     bin("ptcombiner-server"),
		Args:     flags,
		Role:     ptproc.Server,
		Methods:  aliases,
		StateDir: t.TempDir(),
		Options:  opts,
		Logger:   testLogger(t),
		OnLog:    logs.add,
	}
	if ft != nil {
		spec.ExtORPort = ft.addr
		spec.AuthCookieFile = ft.cookiePath
		spec.ORPort = "127.0.0.1:1" // must not be used when an Extended ORPort exists
	}
	p, err := ptproc.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("starting ptcombiner-server: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return &serverCombiner{proc: p, methods: p.ServerMethods(), errs: p.MethodErrors(), logs: logs}
}

// xorBytes applies the test PT's per-hop transform.
func xorBytes(b []byte, key byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[i] = b[i] ^ key
	}
	return out
}

// testptClient speaks the client side of a chain made only of test PT hops
// over conn, as the client combiner with the test PT would: hop n-1's header
// in clear, each inner hop's header under the keys of the hops outside it,
// and the payload under all keys.
type testptStream struct {
	conn *net.TCPConn
	key  byte // the XOR of every hop's key
}

func newTestptStream(conn *net.TCPConn, keys []byte) (*testptStream, error) {
	var pre bytes.Buffer
	var outer byte
	for i := len(keys) - 1; i >= 0; i-- {
		h := []byte(fmt.Sprintf("TESTPT1 test %d\n", keys[i]))
		pre.Write(xorBytes(h, outer))
		outer ^= keys[i]
	}
	if _, err := conn.Write(pre.Bytes()); err != nil {
		return nil, err
	}
	return &testptStream{conn: conn, key: outer}, nil
}

func (s *testptStream) Write(b []byte) (int, error) { return s.conn.Write(xorBytes(b, s.key)) }
func (s *testptStream) Read(b []byte) (int, error) {
	n, err := s.conn.Read(b)
	copy(b, xorBytes(b[:n], s.key))
	return n, err
}

// oneAttributed opens one connection to the public address, sends its own
// address as the first line and random bytes after it through the stream,
// and checks the echo.
func oneAttributed(public string, wrap func(*net.TCPConn) (io.ReadWriter, error), size int) error {
	raw, err := net.DialTimeout("tcp", public, 30*time.Second)
	if err != nil {
		return err
	}
	conn := raw.(*net.TCPConn)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(90 * time.Second))
	rw, err := wrap(conn)
	if err != nil {
		return err
	}
	msg := make([]byte, size)
	rand.Read(msg)
	payload := append([]byte("ID "+conn.LocalAddr().String()+"\n"), msg...)
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

// runLoad runs total connections at the given concurrency and returns the
// failures.
func runLoad(total, workers int, one func(i int) error) []string {
	jobs := make(chan int)
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
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
	for i := 0; i < total; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return failures
}

func randByte() byte {
	n, _ := rand.Int(rand.Reader, big.NewInt(255))
	return byte(n.Int64() + 1)
}

// The race test: thousands of connections at high concurrency through 2- and
// 3-hop chains of the test PT, whose server side waits a random time before
// dialing its Extended ORPort (so arrivals reorder), against a fake tor that
// checks every stream's USERADDR and TRANSPORT.
func TestServerAttributionRace(t *testing.T) {
	total, workers := 3000, 300
	if testing.Short() {
		total, workers = 300, 50
	}
	for _, hops := range []int{2, 3} {
		t.Run(strconv.Itoa(hops)+"hops", func(t *testing.T) {
			alias := "t" + strconv.Itoa(hops)
			ft := startFakeTor(t, alias)
			keys := make([]byte, hops)
			opts := metadata.Args{"delay": {"30"}}
			for i := range keys {
				keys[i] = randByte()
				opts[fmt.Sprintf("%d.key", i)] = []string{strconv.Itoa(int(keys[i]))}
			}
			sc := startServerCombiner(t, ft, []string{alias}, map[string]metadata.Args{alias: opts},
				"--plugin", "test="+bin("testpt"), "--chain", "t2=test|test", "--chain", "t3=test|test|test")
			m, ok := sc.methods[alias]
			if !ok {
				t.Fatalf("no SMETHOD %s: %v", alias, sc.errs)
			}
			for i, k := range keys { // the published args carry every hop's key
				if v, _ := m.Args.Get(fmt.Sprintf("%d.key", i)); v != strconv.Itoa(int(k)) {
					t.Errorf("SMETHOD ARGS %v: hop %d key %q, want %d", m.Args, i, v, k)
				}
			}
			failures := runLoad(total, workers, func(i int) error {
				return oneAttributed(m.Addr.String(), func(c *net.TCPConn) (io.ReadWriter, error) {
					return newTestptStream(c, keys)
				}, 100+i%2000)
			})
			if len(failures) > 0 {
				t.Errorf("%d of %d connections failed; first: %q", len(failures), total, failures[:min(5, len(failures))])
				sc.logs.dump(t, 20)
			}
			ft.check(t, total)
		})
	}
}

// The same with obfs4proxy as the inner hop of obfs4|test: the test speaks
// the outer test PT hop itself and runs an obfs4proxy client for the inner
// one, through a one-use listener per connection so that each connection's
// outer socket is known.
func TestServerAttributionObfs4(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	total, workers := 3000, 300
	if testing.Short() {
		total, workers = 200, 50
	}
	const alias = "o4t"
	ft := startFakeTor(t, alias)
	key := randByte()
	sc := startServerCombiner(t, ft, []string{alias},
		map[string]metadata.Args{alias: {"1.key": {strconv.Itoa(int(key))}, "1.delay": {"30"}}},
		"--plugin", "test="+bin("testpt"), "--plugin", "obfs4="+obfs4proxy, "--chain", alias+"=obfs4|test")
	m, ok := sc.methods[alias]
	if !ok {
		t.Fatalf("no SMETHOD %s: %v", alias, sc.errs)
	}
	per, err := metadata.SplitHops(m.Args, 2)
	if err != nil {
		t.Fatal(err)
	}
	obfs4Args := per[0]
	if _, ok := obfs4Args.Get("cert"); !ok {
		t.Fatalf("published args %v lack hop 0's cert", m.Args)
	}
	client, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "obfs4proxy", Path: obfs4proxy, Role: ptproc.Client, Methods: []string{"obfs4"},
		StateDir: t.TempDir(), Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	socks := client.Methods()["obfs4"].Addr.String()
	user, pass, _ := metadata.SOCKS5Credentials(metadata.EncodeClientArgs(obfs4Args))

	failures := runLoad(total, workers, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		l, err := shim.ListenOnce("127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		// The one-use listener stands for the outer test PT client: it
		// accepts obfs4proxy's connection, dials the bridge, records the
		// outer socket's address and wraps the stream in the test PT hop.
		outerAddr := make(chan string, 1)
		go func() {
			in, err := l.Accept(ctx)
			if err != nil {
				outerAddr <- ""
				return
			}
			raw, err := net.Dial("tcp", m.Addr.String())
			if err != nil {
				in.Close()
				outerAddr <- ""
				return
			}
			out := raw.(*net.TCPConn)
			outerAddr <- out.LocalAddr().String()
			s, err := newTestptStream(out, []byte{key})
			if err != nil {
				in.Close()
				out.Close()
				return
			}
			go func() { io.Copy(s, in); out.CloseWrite() }()
			io.Copy(in, s)
			in.Close()
			out.Close()
		}()
		conn, err := shim.DialSOCKS5(ctx, socks, l.Addr().String(), user, pass)
		if err != nil {
			return err
		}
		defer conn.Close()
		addr := <-outerAddr
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		payload := append([]byte("ID "+addr+"\n"), make([]byte, 100+i%1000)...)
		rand.Read(payload[len("ID "+addr+"\n"):])
		go conn.Write(payload)
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(conn, got); err != nil {
			return fmt.Errorf("echo: %w", err)
		}
		if !bytes.Equal(got, payload) {
			return fmt.Errorf("echo differs")
		}
		return nil
	})
	if len(failures) > 0 {
		t.Errorf("%d of %d connections failed; first: %q", len(failures), total, failures[:min(5, len(failures))])
	}
	ft.check(t, total)
}

// Bad children and bad options on the server side: a clear SMETHOD-ERROR
// or ENV-ERROR, and nothing left running.
func TestServerStartErrors(t *testing.T) {
	ft := startFakeTor(t, "x")
	busy, _ := net.Listen("tcp", "127.0.0.1:0")
	defer busy.Close()
	conf := filepath.Join(t.TempDir(), "server.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`
ServerTransportPlugin test exec %[1]s
ServerTransportPlugin envfail exec %[1]s -mode env-error
ServerTransportPlugin early exec %[1]s -mode exit-before-done
ServerTransportPlugin testgarbage exec %[1]s -mode garbage
Alias ok test|test
Alias badhop test|envfail
Alias missing test|nosuch
Alias busy test
Alias badopts test|test
Alias g test|testgarbage
`, bin("testpt"))), 0o600)
	logs := &logSink{}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-server", Path: bin("ptcombiner-server"), Args: []string{"--config", conf, "--start-timeout", "3s"},
		Role: ptproc.Server, Methods: []string{"ok", "badhop", "missing", "early", "busy", "badopts", "g"},
		StateDir: t.TempDir(), ExtORPort: ft.addr, AuthCookieFile: ft.cookiePath,
		BindAddrs: map[string]string{"busy": busy.Addr().String()},
		Options:   map[string]metadata.Args{"badopts": {"7.key": {"1"}}},
		Logger:    testLogger(t), OnLog: logs.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	errs := p.MethodErrors()
	if _, ok := p.ServerMethods()["ok"]; !ok {
		t.Errorf("chain ok did not start: %v", errs)
	}
	for name, want := range map[string]string{
		"badhop":  "testpt was asked to fail",
		"missing": `"nosuch" is offered by no program`,
		"early":   "exit",
		"busy":    "address already in use",
		"badopts": "hop 7",
	} {
		if !strings.Contains(errs[name], want) {
			t.Errorf("SMETHOD-ERROR %s = %q, want it to contain %q", name, errs[name], want)
		}
	}
	// A child that prints malformed SMETHOD lines before its good ones: the
	// bad lines are logged, the good method is used.
	if _, ok := p.ServerMethods()["g"]; !ok {
		t.Errorf("chain g (a child printing garbage before its SMETHOD) did not start: %q", errs["g"])
	}
	pid := p.Pid()
	kids := childPids(pid)
	p.Close()
	if err := waitGone(append(kids, pid), eventCeiling); err != nil {
		t.Error(err)
	}
}

// Unparsable TOR_PT_SERVER_TRANSPORT_OPTIONS and other bad environments get
// an ENV-ERROR that names the problem, and the program then waits for tor to
// close its stdin (PROTOCOLS.md A25) and exits.
func TestServerBadEnvironment(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"TOR_PT_SERVER_TRANSPORT_OPTIONS=t2:novalue"}, "ENV-ERROR TOR_PT_SERVER_TRANSPORT_OPTIONS"},
		{[]string{"TOR_PT_SERVER_TRANSPORT_OPTIONS=t2:k=v\\"}, "ENV-ERROR TOR_PT_SERVER_TRANSPORT_OPTIONS"},
		{[]string{"TOR_PT_SERVER_BINDADDR=t2-nonsense"}, "ENV-ERROR"},
		{[]string{"TOR_PT_ORPORT=", "TOR_PT_EXTENDED_SERVER_PORT="}, "ENV-ERROR"},
		{[]string{"TOR_PT_MANAGED_TRANSPORT_VER=2"}, "VERSION-ERROR"},
	} {
		env := []string{
			"TOR_PT_MANAGED_TRANSPORT_VER=1", "TOR_PT_STATE_LOCATION=" + t.TempDir(), "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
			"TOR_PT_SERVER_TRANSPORTS=t2", "TOR_PT_SERVER_BINDADDR=t2-127.0.0.1:0", "TOR_PT_ORPORT=127.0.0.1:1",
			"TOR_PT_EXTENDED_SERVER_PORT=",
		}
		env = append(env, tc.env...) // later entries win
		cmd := exec.Command(bin("ptcombiner-server"), "--plugin", "test="+bin("testpt"), "--chain", "t2=test|test")
		cmd.Env = env
		stdin, _ := cmd.StdinPipe()
		var out syncBuffer
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Once it has said why it fails, it waits for tor to close its stdin:
		// it is still there a while later. The sleep is that while, the
		// point of the check (the program lingers 10 s), not a wait for it.
		poll(eventCeiling, func() bool { return strings.Contains(out.String(), tc.want) || !alive(cmd.Process.Pid) })
		time.Sleep(300 * time.Millisecond)
		if !alive(cmd.Process.Pid) {
			t.Errorf("env %q: exited before tor closed its stdin", tc.env)
		}
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("env %q: still running 5 s after stdin closed", tc.env)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("env %q: stdout %q, want %q", tc.env, out.String(), tc.want)
		}
	}
}
