package chain

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// childWithKey returns the pid of the server child whose test method has
// the option key=k.
func childWithKey(t *testing.T, srv *Server, k byte) int {
	t.Helper()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, c := range srv.children {
		if v, _ := c.options["test"].Get("key"); v == strconv.Itoa(int(k)) {
			return c.sup.Pid()
		}
	}
	t.Fatalf("no child has key %d", k)
	return 0
}

// waitLog waits up to d for a log line holding every one of parts.
func waitLog(logs *logBuf, d time.Duration, parts ...string) error {
	deadline := time.Now().Add(d)
	for {
		for _, line := range strings.Split(logs.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no log line with %q", parts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// awaitClosed reads conn until the server closes it, and fails if that
// takes longer than a generous ceiling.
func awaitClosed(t *testing.T, c *testptConn) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the client's connection is still open 60 s later")
	}
}

// A server child that accepted ptcombiner's dial and froze (SIGSTOP) never
// reports the connection on its Extended ORPort: after ArrivalTimeout the
// client's connection is closed and the log names the chain, the hop and the
// child. A connection that did arrive is not bound by it.
func TestServerArrivalTimeout(t *testing.T) {
	tor := startIDTor(t)
	ts := startTestServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath, ArrivalTimeout: time.Second},
		map[string]metadata.Args{"t2": {"0.key": {"21"}, "1.key": {"22"}}, "one": {"key": {"7"}}},
		"t2=test|test", "one=test")
	for _, hop := range []int{1, 0} {
		t.Run("hop"+strconv.Itoa(hop), func(t *testing.T) {
			// A healthy connection, through another child, opened first: its
			// bound would expire before the frozen one's.
			healthy, err := dialTestPT(ts.pubs["one"].Addr.String(), []byte{7})
			if err != nil {
				t.Fatal(err)
			}
			defer healthy.conn.Close()
			healthy.conn.SetDeadline(time.Now().Add(60 * time.Second))
			if err := healthy.echo(healthy.idLine(), 1000); err != nil {
				t.Fatal(err)
			}

			pid := childWithKey(t, ts.srv, []byte{21, 22}[hop])
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			cont := func() { syscall.Kill(pid, syscall.SIGCONT) }
			t.Cleanup(cont) // also when the test fails
			defer cont()

			frozen, err := dialTestPT(ts.pubs["t2"].Addr.String(), []byte{21, 22})
			if err != nil {
				t.Fatal(err)
			}
			defer frozen.conn.Close()
			frozen.Write([]byte(frozen.idLine() + "hello"))
			awaitClosed(t, frozen)
			if err := waitLog(ts.logs, 10*time.Second, "never reported", "chain=t2", "hop="+strconv.Itoa(hop),
				"pid="+strconv.Itoa(pid), "waited=1s"); err != nil {
				t.Error(err)
			}
			if err := healthy.echo("", 1000); err != nil { // its bound ended with its arrival
				t.Errorf("the healthy connection: %v", err)
			}
		})
	}
	if n := ts.srv.PendingStamps(); n != 0 {
		t.Errorf("%d stamps left", n)
	}
}

// Tor may rewrite its cookie file at any time, so each connection to tor
// reads it again; a bad one closes that client's connection under a log
// line that says the cookie is invalid, rather than "cannot reach tor".
func TestServerTorCookieCheckedPerConnection(t *testing.T) {
	tor := startIDTor(t)
	ts := startTestServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath},
		map[string]metadata.Args{"one": {"key": {"7"}}}, "one=test")
	addr := ts.pubs["one"].Addr.String()
	if err := attributed(addr, []byte{7}, 100, 30*time.Second); err != nil {
		t.Fatalf("with a good cookie: %v", err)
	}
	good, err := os.ReadFile(tor.cookiePath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tor.cookiePath, good[:63], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := attributed(addr, []byte{7}, 100, 30*time.Second); err == nil {
		t.Fatal("a connection went through with a 63-byte cookie file")
	}
	if err := waitLog(ts.logs, 10*time.Second, "tor's Extended ORPort cookie is invalid", "63 bytes, want 64"); err != nil {
		t.Error(err)
	}
	if err := CheckTorCookie(tor.cookiePath); err == nil || !errors.Is(err, extorport.ErrBadCookie) ||
		!strings.HasPrefix(err.Error(), "tor's Extended ORPort cookie is invalid: ") {
		t.Errorf("CheckTorCookie = %v", err)
	}
}
