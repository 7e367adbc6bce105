package main

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/procstat"
)

// holdMany opens n chained connections (test PT, 2 hops) through the
// combiners, holds them all at once, checks that every one still carries
// a byte both ways, and reports the combiners' memory per connection.
//
// One process can hold only as many sockets as RLIMIT_NOFILE allows, and a
// 2-hop chained connection needs several in each combiner and each PT.
// When n does not fit, the connections are spread over as many combiner
// pairs (shards) as it takes, as an operator would run several bridges'
// worth of processes; the figures are per connection either way.
func holdMany(e *env, n int) error {
	fmt.Printf("\nHolding %d chained connections (test PT, 2 hops) at once:\n", n)
	limit := nofile()
	if n+200 > limit {
		return fmt.Errorf("ptbench itself may open only %d descriptors, fewer than %d connections", limit, n)
	}
	sink, err := startHelper("sink", filepath.Join(e.work, "hold-cookie"), "small")
	if err != nil {
		return err
	}
	defer sink.close()
	if _, err := sink.expect("PLAIN"); err != nil {
		return err
	}
	sinkExt, err := sink.expect("EXT")
	if err != nil {
		return err
	}
	cookie := filepath.Join(e.work, "hold-cookie")
	// What the combiners and their PTs say tells why a connection failed
	// on their side.
	var logs childLogs
	e.diag = &logs
	defer func() { e.diag = nil }()

	var shards []*topology
	defer func() {
		for _, t := range shards {
			t.run()
		}
	}()
	first, err := e.startCombiners("a", "test", 2, sinkExt, cookie)
	if err != nil {
		return err
	}
	shards = append(shards, first)

	// How many descriptors a connection takes in the busiest process.
	const probe = 200
	pids := append([]int{first.client, first.server}, first.pts()...)
	before := make([]int, len(pids))
	for i, p := range pids {
		before[i] = procstat.Descriptors(p)
	}
	conns, fails := openMany(first, probe, 16)
	if fails.count() > 0 {
		closeAll(conns)
		return fmt.Errorf("%d of %d probe connections failed:\n%scombiners and their PTs said:\n%s", fails.count(), probe, fails, &logs)
	}
	perConn := 0.0
	for i, p := range pids {
		perConn = max(perConn, float64(procstat.Descriptors(p)-before[i])/probe)
	}
	closeAll(conns)
	budget := float64(limit - 500)
	count := int(float64(n)*perConn/budget) + 1
	fmt.Printf("  the busiest process takes %.1f descriptors per connection and may open %d: %d combiner pair(s)\n",
		perConn, limit, count)
	for len(shards) < count {
		t, err := e.startCombiners("a", "test", 2, sinkExt, cookie)
		if err != nil {
			return err
		}
		shards = append(shards, t)
	}
	time.Sleep(time.Second)
	rss0 := 0
	for _, t := range shards {
		rss0 += procstat.RSSKiB(t.client) + procstat.RSSKiB(t.server)
	}

	counters0 := readTCPCounters()
	start := time.Now()
	var all []*net.TCPConn
	var failed failures
	for i, t := range shards {
		share := n / len(shards)
		if i < n%len(shards) {
			share++
		}
		got, fails := openMany(t, share, 32)
		all = append(all, got...)
		failed.merge(fails)
	}
	defer closeAll(all)
	opened := time.Since(start)
	time.Sleep(2 * time.Second)
	rss1, fds := 0, 0
	for _, t := range shards {
		rss1 += procstat.RSSKiB(t.client) + procstat.RSSKiB(t.server)
		fds = max(fds, procstat.Descriptors(t.client), procstat.Descriptors(t.server))
	}

	// Every held connection must still carry a byte both ways.
	var next atomic.Int64
	var dead failures
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for {
				i := next.Add(1) - 1
				if i >= int64(len(all)) {
					return
				}
				c := all[i]
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write([]byte{'y'}); err != nil {
					dead.add(&phaseError{"held, byte out", err})
					continue
				}
				if _, err := io.ReadFull(c, b[:]); err != nil {
					dead.add(&phaseError{"held, byte back", err})
				} else if b[0] != 'y' {
					dead.add(&phaseError{"held, byte back", fmt.Errorf("got %q, want 'y'", b[0])})
				}
			}
		}()
	}
	wg.Wait()
	fmt.Printf("  opened %d of %d in %v (%d failed); after 2 s, %d of them carried a byte both ways, %d did not\n",
		len(all), n, opened.Round(time.Millisecond), failed.count(), len(all)-dead.count(), dead.count())
	fmt.Printf("  the kernel's TCP drop and failure counters (whole machine) while they opened: %s\n",
		tcpCounterGrowth(counters0, readTCPCounters()))
	if failed.count() > 0 || dead.count() > 0 {
		fmt.Printf("  why, as the load generator saw it:\n%s%s", &failed, &dead)
	}
	fmt.Printf("  what the combiners and their PTs said beyond the routine (digits as N):\n%s", &logs)
	fmt.Printf("  combiners' RSS grew by %.1f MiB: %.1f KiB per connection per hop; the busiest combiner holds %d descriptors\n",
		float64(rss1-rss0)/1024, float64(rss1-rss0)/float64(max(len(all), 1))/2, fds)
	if failed.count() > 0 || dead.count() > 0 {
		return fmt.Errorf("holding %d connections: %d failed to open and %d died while held", n, failed.count(), dead.count())
	}
	return nil
}

func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		c.Close()
	}
}
