package chain

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// sockets counts this process's open sockets.
func sockets() int {
	entries, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range entries {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// rssKiB is this process's resident set size.
func rssKiB() int {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// nofile is this process's limit on open descriptors (Go raised the soft
// limit to the hard one at start).
func nofile() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	return int(l.Cur)
}

// inFlight is how many connections TestNoLeaksOverTime keeps going at once:
// 50, or fewer when the descriptor limit would not hold them. Client and
// server engines share this process; 50 connections through 2 hops peaked
// at 321 descriptors here (64 of them free splice pipes). Past the limit
// the accept loops back off (EMFILE) and connections fail for a reason
// that is not a leak.
func inFlight(limit int) int {
	const perConn, reserve = 16, 150
	return max(1, min(50, (limit-reserve)/perConn))
}

type usage struct{ goroutines, sockets, rss int }

func measure() usage {
	runtime.GC()
	debug.FreeOSMemory()
	return usage{runtime.NumGoroutine(), sockets(), rssKiB()}
}

// settle measures until done holds, within a ceiling that is not a timing
// check (inner hops may linger DefaultLinger after a connection ends), and
// returns the last measure and whether done held.
func settle(done func(usage) bool) (usage, bool) {
	deadline := time.Now().Add(DefaultLinger + 50*time.Second)
	for {
		u := measure()
		if done(u) {
			return u, true
		}
		if time.Now().After(deadline) {
			return u, false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leakShare: a closed connection may leave behind at most 1/leakShare of
// what an open one costs, in RSS.
const leakShare = 20

// heldKiB opens n connections with open, holds them all, and returns what
// each costs in RSS over base (KiB); it closes them and waits for their
// sockets to go.
func heldKiB(t *testing.T, n int, open func(i int) net.Conn, base usage) int {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = open(i)
	}
	held := measure()
	for _, c := range conns {
		c.Close()
	}
	if _, ok := settle(func(u usage) bool { return u.sockets <= base.sockets }); !ok {
		t.Fatalf("the %d held connections left sockets open after they closed: %+v", n, measure())
	}
	return max(held.rss-base.rss, 0) / n
}

// After 20,000 connections through a 2-hop chain, one in ten failing on
// purpose, the client and server engines' goroutines and sockets come back
// to where they were, and memory does not grow with the connections made.
func TestNoLeaksOverTime(t *testing.T) {
	total := 20000
	if testing.Short() {
		total = 2000
	}
	cli, srv, pubs, _, _ := pair(t, "t2")
	p := pubs["t2"]
	// Port 1, where nothing listens: a port freed by closing a listener
	// could be handed to one of our own shims meanwhile.
	const deadAddr = "127.0.0.1:1"
	var ok, failed, wrong atomic.Int64
	// The first few failures are reported one by one, the rest counted.
	report := func(format string, args ...any) {
		if failed.Add(1) <= 5 {
			t.Errorf(format, args...)
		}
	}
	one := func(i int) {
		target, args := p.Addr.String(), p.Args
		fail := i%10 == 0
		switch i % 20 {
		case 0:
			target = deadAddr // the outermost hop cannot connect
		case 10:
			args = metadata.Args{"0.key": {"21"}, "1.key": {"99"}} // hop 1's server refuses the key
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := cli.Dial(ctx, "t2", target, args)
		if err != nil {
			if !fail {
				report("conn %d: dial: %v", i, err)
			}
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		msg := []byte(fmt.Sprintf("connection %d\n", i))
		conn.Write(msg)
		got := make([]byte, len(msg))
		_, err = io.ReadFull(conn, got)
		switch {
		case fail:
			if err == nil && wrong.Add(1) <= 5 {
				t.Errorf("conn %d, meant to fail, carried %q", i, got)
			}
		case err != nil:
			report("conn %d: echo: %v", i, err)
		case string(got) != string(msg):
			report("conn %d: sent %q, got %q back", i, msg, got)
		default:
			ok.Add(1)
		}
	}
	// Before any connection.
	pre := measure()
	for i := 1; i <= 100; i++ { // warm up: pools, buffers, goroutine stacks
		one(i)
	}
	// The baseline is taken once the warm-up's sockets are closed.
	if _, ok := settle(func(u usage) bool { return u.sockets <= pre.sockets }); !ok {
		t.Fatalf("the warm-up's connections left sockets open: %+v before them, %+v after", pre, measure())
	}
	base := measure()
	present := goleak.IgnoreCurrent()
	workers := inFlight(nofile())
	t.Logf("%d connections in flight (RLIMIT_NOFILE %d)", workers, nofile())
	// What an open connection costs, measured here: the yardstick for what
	// a closed one may leave behind.
	perConn := heldKiB(t, workers, func(i int) net.Conn {
		conn, err := cli.Dial(context.Background(), "t2", p.Addr.String(), p.Args)
		if err != nil {
			t.Fatalf("held connection %d: %v", i, err)
		}
		echoOnce(t, conn, 100)
		return conn
	}, base)
	backToBase := func(u usage) bool { return u.goroutines <= base.goroutines && u.sockets <= base.sockets }
	run := func(from, to int) {
		jobs := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range jobs {
					one(i)
				}
			}()
		}
		for i := from; i < to; i++ {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
	}
	// Two halves: a leak grows memory in the second as in the first; the
	// first also reaches the high-water mark of connections in flight.
	start := time.Now()
	run(0, total/2)
	mid, _ := settle(backToBase)
	run(total/2, total)
	elapsed := time.Since(start)
	after, _ := settle(backToBase)
	t.Logf("%d connections in %v (%d ok, %d failed, %d meant to fail that did not); before: %+v; half way: %+v; after: %+v; an open connection costs %d KiB; stamps pending: %d",
		total, elapsed.Round(time.Millisecond), ok.Load(), failed.Load(), wrong.Load(), base, mid, after, perConn, srv.PendingStamps())
	if failed.Load() > 0 || wrong.Load() > 0 {
		t.Errorf("%d connections failed and %d that should have failed did not", failed.Load(), wrong.Load())
	}
	if after.goroutines > base.goroutines {
		t.Errorf("goroutines: %d after, %d before", after.goroutines, base.goroutines)
		if err := goleak.Find(present); err != nil {
			msg := err.Error()
			if len(msg) > 4000 {
				msg = msg[:4000] + " ..."
			}
			t.Logf("goroutines left: %s", msg)
		}
	}
	if after.sockets > base.sockets {
		t.Errorf("sockets: %d after, %d before", after.sockets, base.sockets)
	}
	// Memory: the second half's connections, all closed, leave behind less
	// than a twentieth of what as many open connections cost (and at least
	// 1 KiB each is allowed, for a yardstick measured near zero).
	if half := total - total/2; !raceEnabled {
		allowed := half * max(perConn/leakShare, 1)
		if grew := after.rss - mid.rss; grew > allowed {
			t.Errorf("RSS grew by %d KiB over the last %d connections (%d KiB at half way, %d KiB after), more than the %d KiB allowed: 1/%d of the %d KiB an open connection costs, each",
				grew, half, mid.rss, after.rss, allowed, leakShare, perConn)
		}
	}
	if n := srv.PendingStamps(); n != 0 {
		t.Errorf("%d stamps left in the server's book", n)
	}
}
