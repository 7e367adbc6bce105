package test

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
)

// statusSink keeps the STATUS lines a child sent to its parent.
type statusSink struct {
	mu    sync.Mutex
	lines []string
}

func (s *statusSink) add(args string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, args)
}

func (s *statusSink) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// A PT child killed under load: connections through it fail cleanly, it is
// restarted, new connections succeed within 3 seconds, and tor hears of it.
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

	// Load: workers open connections back to back until told to stop.
	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 20; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				conn, err := c.dial(ctx, "t2", bridge, args)
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
	time.Sleep(500 * time.Millisecond)
	before := ok.Load()
	syscall.Kill(kids[0], syscall.SIGKILL)
	killed := time.Now()
	// New connections succeed again within 3 seconds.
	recovered := false
	for time.Since(killed) < 3*time.Second {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		conn, err := c.dial(ctx, "t2", bridge, args)
		cancel()
		if err == nil {
			if roundTrip(t, conn, 1000) == nil {
				recovered = true
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait() // every in-flight connection ended: none hung past its deadline
	if !recovered {
		t.Fatalf("no connection succeeded within 3 s of the crash")
	}
	t.Logf("recovered %v after the kill; %d connections ok before it, %d ok and %d failed in all", time.Since(killed).Round(time.Millisecond), before, ok.Load(), failed.Load())
	if _, err := logs.waitFor(3*time.Second, "PT program exited"); err != nil {
		t.Error(err)
	}
	if status.count("EVENT=exited") == 0 || status.count("TRANSPORT=t2") == 0 {
		t.Errorf("no STATUS line about the crash: %q", status.lines)
	}
	if now := childPids(p.Pid()); len(now) != 1 || now[0] == kids[0] {
		t.Errorf("children after the restart: %v (was %v)", now, kids)
	}
}

// A child that crashes in a loop is restarted at a bounded rate (backoff),
// and its chain reports the failure.
func TestSupervisionCrashLoop(t *testing.T) {
	echo := echoServer(t)
	bridge, args := serverChain(t, echo, testHops(1))
	logs, status := &logSink{}, &statusSink{}
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
	const window = 4 * time.Second
	start := time.Now()
	var reported error
	for time.Since(start) < window {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := c.dial(ctx, "test", bridge, args)
		cancel()
		if err != nil {
			reported = err
		} else {
			conn.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	exits := status.count("EVENT=exited")
	t.Logf("%d exits in %v; last failure seen by the application: %v", exits, window, reported)
	// 100 ms of life, then waits of 0.1, 0.2, 0.4, 0.8, 1.6 s: about 5 in 4 s.
	if exits < 2 || exits > 8 {
		t.Errorf("%d restarts in %v; want a few, bounded by the backoff", exits, window)
	}
	if reported == nil {
		t.Error("no connection failed while the child crashed in a loop")
	}
	if _, err := logs.waitFor(time.Second, "chained connection failed"); err != nil {
		t.Error(err)
	}
}

// A server child killed under load is restarted and the chain serves new
// connections within 3 seconds.
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
	var err error
	for time.Since(killed) < 3*time.Second {
		if err = one(); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("no connection within 3 s of the crash: %v", err)
	}
	t.Logf("recovered %v after the kill", time.Since(killed).Round(time.Millisecond))
	if _, err := sc.logs.waitFor(3*time.Second, "PT program exited"); err != nil {
		t.Error(err)
	}
}
