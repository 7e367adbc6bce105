package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// statusSink keeps the STATUS lines a child sent to its parent; its
// waitFor waits for a line, as logSink's does.
type statusSink struct{ logSink }

func (s *statusSink) add(args string) { s.logSink.add("STATUS", args) }

// statusField is the value of KEY=value in a STATUS line, or "".
func statusField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// loadUntil runs workers that open connections back to back through alias
// until the returned stop is called; stop waits for them (every in-flight
// connection ends by its deadline) and may be called more than once.
func loadUntil(t *testing.T, c *combiner, alias, bridge string, args metadata.Args, workers int) (ok, failed *atomic.Int64, stop func()) {
	ok, failed = new(atomic.Int64), new(atomic.Int64)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				conn, err := c.dial(ctx, alias, bridge, args)
				if err == nil {
					conn.SetDeadline(time.Now().Add(20 * time.Second))
					err = roundTrip(t, conn, 200000)
				}
				cancel()
				if err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return ok, failed, stop
}

// dialOnce opens one connection through alias and carries 1000 bytes.
func dialOnce(t testing.TB, c *combiner, alias, bridge string, args metadata.Args) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	conn, err := c.dial(ctx, alias, bridge, args)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(eventCeiling))
	return roundTrip(t, conn, 1000)
}

// A PT child killed under load: connections through it fail cleanly, it is
// restarted, tor hears of it, and the first connection after the restart
// succeeds.
func TestSupervisionClientCrash(t *testing.T) {
	echo := echoServer(t)
	bridge, args := serverChain(t, echo, testHops(2))
	logs, status := &logSink{}, &statusSink{}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: bin("ptcombiner-client"), Args: testpFlags(), Role: ptproc.Client,
		Methods: []string{"t2"}, StateDir: t.TempDir(), Logger: testLogger(t), OnLog: logs.add, OnStatus: status.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := &combiner{proc: p, methods: p.Methods(), errs: p.MethodErrors(), logs: logs}
	kids := childPids(p.Pid())
	if len(kids) != 1 {
		t.Fatalf("children: %v", kids)
	}

	ok, failed, stop := loadUntil(t, c, "t2", bridge, args, 20)
	waitFor(t, "20 connections to succeed under load before the crash", eventCeiling, func() bool { return ok.Load() >= 20 })
	before := ok.Load()
	syscall.Kill(kids[0], syscall.SIGKILL)
	killed := time.Now()
	// Tor hears of the crash and of the restart, in STATUS lines.
	if _, err := status.waitFor(eventCeiling, "TRANSPORT=t2", "EVENT=exited", "PID="+strconv.Itoa(kids[0])); err != nil {
		t.Fatal(err)
	}
	restarted, err := status.waitFor(eventCeiling, "TRANSPORT=t2", "EVENT=restarted")
	if err != nil {
		t.Fatal(err)
	}
	// The first connection after the restart succeeds.
	err = dialOnce(t, c, "t2", bridge, args)
	recovered := time.Since(killed)
	stop()
	if err != nil {
		t.Fatalf("the first connection after the restart (%s): %v", restarted, err)
	}
	t.Logf("a connection succeeded %v after the kill; %d connections ok before it, %d ok and %d failed in all",
		recovered.Round(time.Millisecond), before, ok.Load(), failed.Load())
	if _, err := logs.waitFor(eventCeiling, "PT program exited"); err != nil {
		t.Error(err)
	}
	newPid := statusField(restarted, "PID")
	if now := childPids(p.Pid()); len(now) != 1 || strconv.Itoa(now[0]) != newPid || now[0] == kids[0] {
		t.Errorf("children after the restart: %v (was %v; STATUS says PID=%s)", now, kids, newPid)
	}
}

// A child that crashes in a loop is restarted at a bounded rate: each wait
// before a restart doubles, the restarts really wait that long, and the
// chain reports the failure to the application meanwhile.
func TestSupervisionCrashLoop(t *testing.T) {
	echo := echoServer(t)
	bridge, args := serverChain(t, echo, testHops(1))
	logs, status := &logSink{}, &statusSink{}
	start := time.Now() // no crash of the child can come before this
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: bin("ptcombiner-client"), Role: ptproc.Client, Methods: []string{"test"},
		Args:     []string{"--config", writeConfig(t, "ClientTransportPlugin test exec "+bin("testpt")+" -mode crash-after -crash-after 100ms\n")},
		StateDir: t.TempDir(), Logger: testLogger(t), OnLog: logs.add, OnStatus: status.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := &combiner{proc: p, methods: p.Methods(), errs: p.MethodErrors(), logs: logs}
	// Crash k announces the wait before the next start: RESTART_IN, with
	// CRASHES=k (an exit, or a start that failed).
	const crashes = 5
	var reported error
	waits := map[int]time.Duration{}
	waitFor(t, fmt.Sprintf("%d crashes in a row, and a connection that fails meanwhile", crashes), eventCeiling, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := c.dial(ctx, "test", bridge, args)
		cancel()
		if err != nil {
			reported = err
		} else {
			conn.Close()
		}
		status.mu.Lock()
		defer status.mu.Unlock()
		for _, l := range status.lines {
			n, _ := strconv.Atoi(statusField(l, "CRASHES"))
			if w, err := time.ParseDuration(statusField(l, "RESTART_IN")); err == nil && n > 0 {
				waits[n] = w
			}
		}
		return len(waits) >= crashes && reported != nil
	})
	seen := time.Since(start)
	t.Logf("restart waits %v; crash %d seen %v after the start; last failure seen by the application: %v", waits, crashes, seen, reported)
	// The backoff doubles (30 s, its cap, is far off).
	var sum time.Duration
	for k := 1; k < crashes; k++ {
		if waits[k] <= 0 || waits[k+1] != 2*waits[k] {
			t.Errorf("wait after crash %d is %v, after crash %d %v; want it to double", k, waits[k], k+1, waits[k+1])
		}
		sum += waits[k]
	}
	// And the restarts waited: crash 5 comes after the waits that followed
	// crashes 1 to 4. This bound is from below, so load cannot break it.
	if seen < sum {
		t.Errorf("crash %d came %v after the start, before the %v of waits announced for the restarts", crashes, seen, sum)
	}
	if _, err := logs.waitFor(eventCeiling, "chained connection failed"); err != nil {
		t.Error(err)
	}
}

// A server child killed under load is restarted and the chain serves the
// first connection after the restart.
func TestSupervisionServerCrash(t *testing.T) {
	ft := startFakeTor(t, "t2")
	sc := startServerCombiner(t, ft, []string{"t2"}, nil, "--plugin", "test="+bin("testpt"), "--chain", "t2=test|test")
	m := sc.methods["t2"]
	kids := childPids(sc.proc.Pid())
	if len(kids) != 1 {
		t.Fatalf("children: %v", kids)
	}
	keys := []byte{90, 90}
	one := func() error {
		return oneAttributed(m.Addr.String(), func(conn *net.TCPConn) (io.ReadWriter, error) { return newTestptStream(conn, keys) }, 1000)
	}
	if err := one(); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(kids[0], syscall.SIGKILL)
	killed := time.Now()
	if _, err := sc.logs.waitFor(eventCeiling, "PT program exited"); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.logs.waitFor(eventCeiling, "PT program restarted"); err != nil {
		t.Fatal(err)
	}
	if err := one(); err != nil {
		t.Fatalf("the first connection after the restart: %v", err)
	}
	t.Logf("a connection succeeded %v after the kill", time.Since(killed).Round(time.Millisecond))
	if now := childPids(sc.proc.Pid()); len(now) != 1 || now[0] == kids[0] {
		t.Errorf("children after the restart: %v (was %v)", now, kids)
	}
}
