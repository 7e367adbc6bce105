package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
)

// testLogger sends a child's log lines to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// serveLoopback listens on a loopback port and runs handle on each
// connection in its own goroutine, closing the connection after; the
// listener and every handler end before the test does.
func serveLoopback(t testing.TB, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// echoServer answers every connection with what it receives, honouring
// half-close, until the test ends.
func echoServer(t testing.TB) string {
	t.Helper()
	return serveLoopback(t, func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
}

// serverPT runs the server side of a PT program as tor would, with its
// ORPort pointed at orport, and returns its SMETHODs.
func serverPT(t testing.TB, path string, args []string, methods []string, opts map[string]metadata.Args, orport string) map[string]ptproc.Smethod {
	t.Helper()
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name:      filepath.Base(path),
		Path:      path,
		Args:      args,
		Role:      ptproc.Server,
		Methods:   methods,
		StateDir:  t.TempDir(),
		Options:   opts,
		ORPort:    orport,
		ExtORPort: "",
		Logger:    testLogger(t),
	})
	if err != nil {
		t.Fatalf("starting server %s: %v", path, err)
	}
	t.Cleanup(func() { p.Close() })
	got := p.ServerMethods()
	for _, m := range methods {
		if _, ok := got[m]; !ok {
			t.Fatalf("server %s did not offer %s (errors: %v)", path, m, p.MethodErrors())
		}
	}
	return got
}

// serverHop describes one server-side hop wired by a test, outermost last.
type serverHop struct {
	path    string
	args    []string
	method  string
	options metadata.Args
}

// serverChain wires server PTs by hand, innermost hop towards final: hop 0's
// ORPort is final, hop i's ORPort is hop i-1's listener. It returns the
// outermost listener and the per-hop client args, N.key-prefixed, taken from
// each server's SMETHOD ARGS.
func serverChain(t testing.TB, final string, hops []serverHop) (string, metadata.Args) {
	t.Helper()
	next := final
	per := make([]metadata.Args, len(hops))
	for i, h := range hops {
		var opts map[string]metadata.Args
		if h.options != nil {
			opts = map[string]metadata.Args{h.method: h.options}
		}
		sm := serverPT(t, h.path, h.args, []string{h.method}, opts, next)[h.method]
		next = sm.Addr.String()
		per[i] = sm.Args
	}
	return next, metadata.JoinHops(per)
}

// combiner is ptcombiner-client run by a tor-like parent (ptproc itself).
type combiner struct {
	stateDir string
	logs     *logSink
	proc     *ptproc.Process
	methods  map[string]ptproc.Cmethod
	errs     map[string]string
}

func startCombiner(t testing.TB, aliases []string, flags ...string) *combiner {
	t.Helper()
	c, err := tryCombiner(t, aliases, flags...)
	if err != nil {
		t.Fatalf("starting ptcombiner-client: %v", err)
	}
	return c
}

func tryCombiner(t testing.TB, aliases []string, flags ...string) (*combiner, error) {
	t.Helper()
	dir := t.TempDir()
	logs := &logSink{}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name:     "ptcombiner-client",
		Path:     bin("ptcombiner-client"),
		Args:     flags,
		Role:     ptproc.Client,
		Methods:  aliases,
		StateDir: dir,
		Logger:   testLogger(t),
		OnLog:    logs.add,
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { p.Close() })
	return &combiner{stateDir: dir, logs: logs, proc: p, methods: p.Methods(), errs: p.MethodErrors()}, nil
}

// dial opens a SOCKS connection through alias to target with args, as tor does.
func (c *combiner) dial(ctx context.Context, alias, target string, args metadata.Args) (*net.TCPConn, error) {
	m, ok := c.methods[alias]
	if !ok {
		return nil, fmt.Errorf("no CMETHOD for %s (errors: %v)", alias, c.errs)
	}
	user, pass, err := metadata.SOCKS5Credentials(metadata.EncodeClientArgs(args))
	if err != nil {
		return nil, err
	}
	return shim.DialSOCKS5(ctx, m.Addr.String(), target, user, pass)
}

// roundTrip sends size random bytes through conn to an echo server and checks
// that exactly the same bytes come back. It never half-closes: obfs4proxy,
// like most PTs, closes both directions at the first EOF.
func roundTrip(t testing.TB, conn *net.TCPConn, size int) error {
	t.Helper()
	defer conn.Close()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		errc <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(conn, int64(size)))
	werr := <-errc
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", n, err)
	}
	if werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if n != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("got %d bytes back (sha256 %x), sent %d (sha256 %x)", n, h.Sum(nil)[:6], size, want[:6])
	}
	return nil
}

// childPids lists the live children of pid, from /proc.
func childPids(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			out = append(out, n)
		}
	}
	return out
}

// alive reports whether pid still runs (zombies count as gone).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// waitGone waits up to d for every pid to be gone.
func waitGone(pids []int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes still alive after %v: %v", d, left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logSink keeps the LOG lines a child sent to its parent.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

func (l *logSink) add(severity ptproc.Severity, message string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, string(severity)+": "+message)
}

// dump logs the last n LOG lines, so that a failed test shows what the
// combiner warned about.
func (l *logSink) dump(t testing.TB, n int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines[max(0, len(l.lines)-n):] {
		t.Log("combiner LOG " + line)
	}
}

// waitFor waits up to d for a LOG line containing every one of parts.
func (l *logSink) waitFor(d time.Duration, parts ...string) (string, error) {
	deadline := time.Now().Add(d)
	for {
		l.mu.Lock()
		for _, line := range l.lines {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				l.mu.Unlock()
				return line, nil
			}
		}
		all := strings.Join(l.lines, "\n")
		l.mu.Unlock()
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no LOG line with %q; got:\n%s", parts, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fdCount is the number of open sockets (connections and listeners) of
// pid. Pipes are not counted: Go keeps a pool of pipes for splice(2), which
// the garbage collector frees in its own time.
func fdCount(pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range entries {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// waitFDs waits up to d for pid's sockets to come back to at most baseline:
// every socket and listener of the connections made since is closed.
func waitFDs(t testing.TB, pid, baseline int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := fdCount(pid)
		if n <= baseline {
			return
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
			t.Errorf("pid %d holds %d sockets, %d at the baseline (%d descriptors in all)", pid, n, baseline, len(entries))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeConfig writes a config file for a test and returns its path.
func writeConfig(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ptcombiner.conf")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
