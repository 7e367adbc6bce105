package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/freetest"
	"github.com/ptcombiner/ptcombiner/shim"
)

// inFlight opens n streams to the echo server through the rig's proxy and
// checks each echoes.
func inFlight(t *testing.T, r *freeRig, echo string, n int) []*net.TCPConn {
	t.Helper()
	var conns []*net.TCPConn
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
		c, err := shim.DialSOCKS5(ctx, r.proxy, echo, nil, nil)
		cancel()
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if err := freetest.Echo(c, eventCeiling, fmt.Sprintf("stream %d", i)); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// failed checks that every stream in flight fails with a reset: a clear
// error, never an end that could pass for a complete transfer.
func failed(t *testing.T, conns []*net.TCPConn) {
	t.Helper()
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(eventCeiling))
		n, err := io.Copy(io.Discard, c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("stream %d in flight: %d more bytes, then %v; want a connection reset", i, n, err)
		}
	}
}

// recovers waits for a new stream to work again, and returns how long it
// took.
func recovers(t *testing.T, r *freeRig, echo string) time.Duration {
	t.Helper()
	var last error
	took := waitFor(t, "a new stream to work", eventCeiling, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
		defer cancel()
		c, err := shim.DialSOCKS5(ctx, r.proxy, echo, nil, nil)
		if err != nil {
			last = err
			return false
		}
		defer c.Close()
		last = freetest.Echo(c, eventCeiling, "again")
		return last == nil
	})
	t.Logf("a new stream worked %v after the fault was repaired (the last failure before: %v)", took.Round(time.Millisecond), last)
	return took
}

// Acceptance 4: killing the client's outermost PT child mid-session fails
// the streams in flight with a reset and a log line; the child is
// restarted, and new streams work again.
func TestFreeFaultClientPT(t *testing.T) {
	r := startFree(t, freeSetups()["testpt"], []string{"--allow", "127.0.0.0/8"}, nil)
	echo := echoServer(t)
	conns := inFlight(t, r, echo, 5)
	children := childPids(r.cli.Process.Pid)
	if len(children) != 1 { // one test PT serves both hops
		t.Fatalf("ptcombiner-client runs %d children, want 1", len(children))
	}
	if err := syscall.Kill(children[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	failed(t, conns)
	waitFor(t, "the client's log line", eventCeiling, func() bool {
		return strings.Contains(r.cliLog.String(), "free session broke")
	})
	recovers(t, r, echo)
	if n := r.accepted.Load(); n != 2 {
		t.Errorf("the bridge accepted %d chained connections, want 2 (one session before the fault, one after)", n)
	}
}

// Acceptance 4: killing the bridge's combiner mid-session fails the
// streams in flight; while it is down new streams are refused, and once
// it is back (restarted, same state) they work again within the backoff.
func TestFreeFaultBridge(t *testing.T) {
	r := startFree(t, freeSetups()["testpt"], []string{"--allow", "127.0.0.0/8"}, []string{"--session-wait", "2s"})
	echo := echoServer(t)
	conns := inFlight(t, r, echo, 5)
	r.srv.Process.Kill()
	waitExited(t, r.srv)
	failed(t, conns)
	// Down: refused, after the session wait at most, with a reply.
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
		c, err := shim.DialSOCKS5(ctx, r.proxy, echo, nil, nil)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("stream %d with the bridge down was granted", i)
		}
		var re *shim.ReplyError
		if !errors.As(err, &re) {
			t.Errorf("stream %d with the bridge down: %v, want a SOCKS reply", i, err)
		}
	}
	lines, srvLog, srv := launchStandalone(t, 1, bin("ptcombiner-server"), r.srvArgs...)
	r.srvLog, r.srv = srvLog, srv
	public := strings.Fields(lines[0])[2]
	r.upstream.Store(&public)
	recovers(t, r, echo)
	if !strings.Contains(r.cliLog.String(), "cannot open a session to the bridge") {
		t.Error("no log line for the failed dials while the bridge was down")
	}
}

// Acceptance 4: 5,000 streams through the binaries, 50 at once, leave no
// socket behind in either combiner (the goroutines are package free's
// tests': TestSessionManyStreams under goleak).
func TestFreeManyStreams(t *testing.T) {
	r := startFree(t, freeSetups()["testpt"], []string{"--allow", "127.0.0.0/8"}, nil)
	echo := echoServer(t)
	inFlight(t, r, echo, 1)[0].Close() // the session is up
	srvBase, cliBase := fdCount(r.srv.Process.Pid), fdCount(r.cli.Process.Pid)
	total := 5000
	if testing.Short() {
		total = 1000
	}
	failures := runLoad(total, 50, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
		defer cancel()
		c, err := shim.DialSOCKS5(ctx, r.proxy, echo, nil, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return freetest.Echo(c, eventCeiling, fmt.Sprintf("stream %d", i))
	})
	if len(failures) > 0 {
		t.Fatalf("%d of %d streams failed; first: %q", len(failures), total, failures[:min(3, len(failures))])
	}
	t.Logf("sockets at the baseline: server %d, client %d", srvBase, cliBase)
	waitFDs(t, r.srv.Process.Pid, srvBase, eventCeiling)
	waitFDs(t, r.cli.Process.Pid, cliBase, eventCeiling)
	if n := r.accepted.Load(); n != 1 {
		t.Errorf("the bridge accepted %d chained connections, want 1", n)
	}
}
