package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/shim"
)

// slowSetup, when set (-slow), reports every setup that took longer.
var slowSetup time.Duration

// params are the sizes of one run.
type params struct {
	size    int64 // bytes each way, single stream; the 8 streams share as many
	streams int
	setups  int
	idle    int
	// holdOnly skips the table: only the held connections (-hold-only).
	holdOnly bool
	free     bool // measure each chain free too (-free)
	// inproc are the in-process chains (e) to measure, each a list of
	// builtin methods, innermost first (-inproc).
	inproc [][]string
	// profile, when set, is where the CPU profile of the in-process
	// engines goes (-profile-inproc).
	profile, profileChain string
	// links are the emulated links over which each chain is measured
	// again (-links), with linkSetups setups (-link-setups) and linkSize
	// bytes each way for the single stream (-link-size).
	links      []linkShape
	linkSetups int
	linkSize   int64
	// streamSize is what each of the concurrent streams carries each way
	// in a round (-link-stream-size); 0: they share the single stream's
	// round, linkSize/4 (then each is shorter than a few windows, and
	// evenness measures which stream's first windows reach the link's
	// queue first more than how the streams share it).
	streamSize int64
	// streamWindow is the free topologies' --stream-window (KiB; 0:
	// the default).
	streamWindow int
	// sessionWindow, when set, is the free topologies' --session-window
	// (KiB; -1: none), both ends (-session-window).
	sessionWindow int
	// down adds a one-way stream to each round: the sink sends and the
	// user's side only reads (the links' measurement).
	down bool
	// loaded sets up a connection every loadedEvery while the concurrent
	// streams run (the links' measurement): what a new connection (or
	// stream) waits behind bulk.
	loaded bool
}

// result is what one topology measured.
type result struct {
	single, multi float64 // MB/s each way
	down          float64 // MB/s of a one-way stream (params.down)
	// fair is how evenly the 8 streams shared the chain: the shortest
	// stream's time over the longest's, in the most uneven round.
	fair          float64
	p50, p90, p99 time.Duration
	// loaded is the p50 of the setups (params.loaded) made while the
	// concurrent streams ran; loadedErrs the ones that failed.
	loaded     time.Duration
	loadedErrs int
	// rtt is the p50 of a byte's round trip on a connection already set
	// up: what every setup's first byte pays on top of the setup proper.
	rtt time.Duration
	// CPU milliseconds per setup of the combiner (or relay) processes,
	// client and server side: the setups are interleaved, so what each
	// topology's processes spent during them is theirs.
	setupCPUClient, setupCPUServer float64
	setupErrs                      int
	setupFails                     failures // why they failed
	// CPU seconds of the combiner (or relay) processes while the streams
	// ran, client and server side, and of the whole chain (PTs included).
	cpuClient, cpuServer, cpuAll float64
	gib                          float64 // GiB through each splice point, both ways counted
	// Per idle connection: resident KiB and descriptors, client and server.
	rssClient, rssServer float64
	fdsClient, fdsServer float64
	// rssAll is the resident KiB per idle connection of every process of
	// the chain together (PTs included); procs counts those processes.
	rssAll   float64
	procs    int
	idleErrs int
}

// roundTrip is the p50 of 101 one-byte round trips, one after another, on
// one connection through t.
func roundTrip(t *topology) (time.Duration, error) {
	c, err := t.dialRetry(30 * time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	lat := make([]time.Duration, 0, 101)
	var b [1]byte
	for k := 0; k < cap(lat); k++ {
		start := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, err
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	return lat[len(lat)/2], nil
}

// cpuPerSplice is the CPU seconds per GiB per splice point of one side.
func (r *result) cpuPerSplice(cpu float64, splices int) float64 {
	if r.gib == 0 || splices == 0 {
		return 0
	}
	return cpu / r.gib / float64(splices)
}

// dial opens one connection through t and waits for one byte to come back
// from the sink: the connection is then set up end to end. An error is a
// *phaseError, which says at which step it failed.
func (t *topology) dial(ctx context.Context) (*net.TCPConn, error) {
	conn, err := t.connect(ctx)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	var b [1]byte
	if _, err := conn.Write([]byte{'x'}); err != nil {
		conn.Close()
		return nil, &phaseError{"first byte out", err}
	}
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		conn.Close()
		return nil, &phaseError{"first byte back", err}
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// connect is dial without its first byte's round trip: the connection
// and SOCKS handshake only.
func (t *topology) connect(ctx context.Context) (*net.TCPConn, error) {
	addr := t.target
	if t.socks != "" {
		addr = t.socks
	}
	// Like the combiners, the load generator (tor's stand-in) sends no
	// keepalive probes on loopback: 10,000 held connections' probes would
	// come in bursts that drop packets (internal/loopback).
	c, err := loopback.Dialer(addr).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &phaseError{"connect", err}
	}
	conn := c.(*net.TCPConn)
	if t.socks != "" {
		if err := shim.Handshake(ctx, conn, t.target, t.user, t.pass); err != nil {
			conn.Close()
			return nil, &phaseError{"SOCKS handshake", err}
		}
	}
	return conn, nil
}

func (t *topology) dialTimeout(d time.Duration) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return t.dial(ctx)
}

// dialRetry is dialTimeout, tried up to 5 times when the chain is known to
// stall now and then (t.stalls), so that the warm-up and the streams get
// their connections; the setup and idle phases count every failure.
func (t *topology) dialRetry(d time.Duration) (*net.TCPConn, error) {
	tries := 1
	if t.stalls {
		tries, d = 5, min(d, 10*time.Second)
	}
	var err error
	for k := 0; k < tries; k++ {
		var c *net.TCPConn
		if c, err = t.dialTimeout(d); err == nil {
			return c, nil
		}
		t.stalled.Add(1)
	}
	return nil, err
}

func (t *topology) cpu() (client, server, all float64) {
	if t.client == 0 {
		return 0, 0, 0 // raw TCP: only the load generator and the sink
	}
	client, server = procstat.CPUSeconds(t.client), procstat.CPUSeconds(t.server)
	all = client + server
	for _, p := range t.pts() {
		all += procstat.CPUSeconds(p)
	}
	return client, server, all
}

// measureGroup measures topologies that carry the same chain side by side,
// all running at once: idle connections first, one topology after another
// (so that the memory figure is not blurred by what the transfers left),
// then setup latency, interleaved (one setup of each in turn, each round
// starting with the next, so that the machine's drift weighs on all
// alike), then the single stream and the 8 streams, in rounds (each
// topology has the CPUs to itself while it runs).
func measureGroup(ts []*topology, p params, progress func(*topology, string)) ([]*result, error) {
	rs := make([]*result, len(ts))
	for i, t := range ts {
		rs[i] = &result{}
		for k := 0; k < 5; k++ { // warm up: the PTs' first connections
			c, err := t.dialRetry(30 * time.Second)
			if err != nil {
				return nil, fmt.Errorf("%s: warm-up: %w", t.name(), err)
			}
			c.Close()
		}
		if t.client != 0 {
			rs[i].procs = 2 + len(t.pts())
		}
	}
	for i, t := range ts {
		if p.idle > 0 && t.client != 0 {
			progress(t, fmt.Sprintf("%d idle connections", p.idle))
			measureIdle(t, rs[i], p.idle)
		}
	}

	lat := make([][]time.Duration, len(ts))
	failedInARow := make([]int, len(ts))
	cpu0 := make([][2]float64, len(ts))
	for i, t := range ts {
		cpu0[i][0], cpu0[i][1], _ = t.cpu()
	}
	for k := 0; k < p.setups; k++ {
		if k%100 == 0 {
			progress(ts[0], fmt.Sprintf("setups %d-%d of %d, interleaved", k+1, min(k+100, p.setups), p.setups))
		}
		for j := range ts {
			// Each round starts with the next topology, so that none is
			// always the one that follows another (whose connection is
			// still closing) or the first.
			i := (j + k) % len(ts)
			t := ts[i]
			if failedInARow[i] >= giveUpAfter {
				rs[i].setupErrs++ // counted, not tried: each would wait for its timeout
				rs[i].setupFails.addUntried(1)
				continue
			}
			start := time.Now()
			c, err := t.dialTimeout(10 * time.Second)
			if err != nil {
				rs[i].setupErrs++
				rs[i].setupFails.add(err)
				if failedInARow[i]++; failedInARow[i] == giveUpAfter {
					fmt.Fprintf(os.Stderr, "ptbench: %s: %d setups in a row failed, the last with %v; the rest count as failed\n",
						t.name(), giveUpAfter, err)
				}
				continue
			}
			failedInARow[i] = 0
			d := time.Since(start)
			lat[i] = append(lat[i], d)
			if slowSetup > 0 && d > slowSetup {
				fmt.Fprintf(os.Stderr, "slow setup: %s: %v at %s (%s)\n", t.name(), d, start.Format("15:04:05.000000"), c.LocalAddr())
			}
			c.Close()
		}
	}
	for i, t := range ts {
		if n := len(lat[i]); n > 0 {
			c, s, _ := t.cpu()
			rs[i].setupCPUClient = (c - cpu0[i][0]) * 1e3 / float64(n)
			rs[i].setupCPUServer = (s - cpu0[i][1]) * 1e3 / float64(n)
		}
		if rs[i].setupErrs > 0 {
			fmt.Fprintf(os.Stderr, "ptbench: %s: %d of %d setups failed:\n%s", t.name(), rs[i].setupErrs, p.setups, &rs[i].setupFails)
		}
		if l := lat[i]; len(l) > 0 {
			slices.Sort(l)
			rs[i].p50 = l[len(l)/2]
			rs[i].p90 = l[min(len(l)-1, len(l)*90/100)]
			rs[i].p99 = l[min(len(l)-1, len(l)*99/100)]
		}
	}

	for i, t := range ts {
		var err error
		if rs[i].rtt, err = roundTrip(t); err != nil {
			return nil, fmt.Errorf("%s: round trips: %w", t.name(), err)
		}
	}

	// The streams run in rounds, each topology in turn within a round, so
	// that a slow moment of the machine does not fall on one topology only.
	if p.size == 0 {
		return rs, nil
	}
	const rounds = 4
	single := make([]time.Duration, len(ts))
	multi := make([]time.Duration, len(ts))
	down := make([]time.Duration, len(ts))
	downBytes := make([]int64, len(ts))
	loaded := make([][]time.Duration, len(ts))
	part := p.size / rounds
	each := part / int64(p.streams) // what each of the p.streams carries
	if p.streamSize > 0 {
		each = p.streamSize
	}
	for round := 1; round <= rounds; round++ {
		for i, t := range ts {
			r := rs[i]
			progress(t, fmt.Sprintf("round %d of %d: 1 stream of %s each way, then %d of %s", round, rounds, bytesString(part), p.streams, bytesString(each)))
			c0, s0, a0 := t.cpu()
			d, _, err := streams(t, 1, part)
			if err != nil {
				return nil, fmt.Errorf("%s: single stream: %w", t.name(), err)
			}
			single[i] += d
			var probes []time.Duration
			stop := make(chan struct{})
			var probing sync.WaitGroup
			if p.loaded {
				probing.Go(func() { probes = setupsUntil(t, stop, &r.loadedErrs) })
			}
			d, fair, err := streams(t, p.streams, each)
			close(stop)
			probing.Wait()
			loaded[i] = append(loaded[i], probes...)
			if err != nil {
				return nil, fmt.Errorf("%s: %d streams: %w", t.name(), p.streams, err)
			}
			multi[i] += d
			if round == 1 || fair < r.fair {
				r.fair = fair
			}
			c1, s1, a1 := t.cpu()
			r.cpuClient += c1 - c0
			r.cpuServer += s1 - s0
			r.cpuAll += a1 - a0
			if p.down { // after the CPU figures, which count the streams' bytes only
				d, n, err := download(t, part)
				if err != nil {
					return nil, fmt.Errorf("%s: one-way stream: %w", t.name(), err)
				}
				down[i] += d
				downBytes[i] += n
			}
		}
	}
	for i, r := range rs {
		if l := loaded[i]; len(l) > 0 {
			slices.Sort(l)
			r.loaded = l[len(l)/2]
		}
		r.single = float64(part*rounds) / single[i].Seconds() / 1e6
		r.multi = float64(each*int64(p.streams)*rounds) / multi[i].Seconds() / 1e6
		if p.down && down[i] > 0 { // 0: each download came in its first read
			r.down = float64(downBytes[i]) / down[i].Seconds() / 1e6
		}
		// Each splice point carried part each way in the single stream
		// and each*streams in the concurrent ones, each round.
		r.gib = float64(2*(part+each*int64(p.streams))*rounds) / (1 << 30)
	}
	return rs, nil
}

// measureIdle opens n connections through t, holds them, and records the
// growth of the combiner's (or relay's) memory and descriptors.
func measureIdle(t *topology, r *result, n int) {
	time.Sleep(300 * time.Millisecond)
	pids := append([]int{t.client, t.server}, t.pts()...)
	rssAll := func() (kib int) {
		for _, p := range pids {
			kib += procstat.RSSKiB(p)
		}
		return kib
	}
	rss0 := rssAll()
	rss0c, rss0s := procstat.RSSKiB(t.client), procstat.RSSKiB(t.server)
	fd0c, fd0s := procstat.Descriptors(t.client), procstat.Descriptors(t.server)
	conns, fails := openMany(t, n, 16)
	r.idleErrs = fails.count()
	if r.idleErrs > 0 {
		fmt.Fprintf(os.Stderr, "ptbench: %s: %d of %d idle connections failed:\n%s", t.name(), r.idleErrs, n, fails)
	}
	time.Sleep(500 * time.Millisecond)
	if k := float64(len(conns)); k > 0 {
		r.rssClient = float64(procstat.RSSKiB(t.client)-rss0c) / k
		r.rssServer = float64(procstat.RSSKiB(t.server)-rss0s) / k
		r.fdsClient = float64(procstat.Descriptors(t.client)-fd0c) / k
		r.fdsServer = float64(procstat.Descriptors(t.server)-fd0s) / k
		r.rssAll = float64(rssAll()-rss0) / k
	}
	closeAll(conns)
	time.Sleep(500 * time.Millisecond)
}

// giveUpAfter is how many failed connections ptbench tries before it stops
// dialling a topology in a phase: a process out of descriptors, or dead,
// makes every further dial wait for its timeout.
const giveUpAfter = 10

// openMany opens n connections through t, workers at a time, and returns
// those that worked and why the others failed. It gives up after
// giveUpAfter failures, counting the connections it did not try as failed.
func openMany(t *topology, n, workers int) ([]*net.TCPConn, *failures) {
	var (
		mu    sync.Mutex
		conns []*net.TCPConn
		fails failures
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				c, err := t.dialTimeout(30 * time.Second)
				if err != nil {
					fails.add(err)
				} else {
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
				if fails.count() >= giveUpAfter {
					return
				}
			}
		}()
	}
	wg.Wait()
	fails.addUntried(n - len(conns) - fails.count())
	return conns, &fails
}

// streams sends size bytes each way on each of n connections at once and
// returns the time from the first byte to the last, and how evenly the
// connections shared the way: the shortest connection's time over the
// longest's (each carried as much; 1 for one connection).
func streams(t *topology, n int, size int64) (time.Duration, float64, error) {
	return streamsOver(func() (net.Conn, error) { return t.dialRetry(30 * time.Second) }, n, size)
}

// bytesString is n bytes in MiB, or in KiB below 1 MiB.
func bytesString(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// loadedEvery is how often setupsUntil sets up a connection.
const loadedEvery = 250 * time.Millisecond

// setupsUntil sets up a connection through t every loadedEvery, one at a
// time, until stop is closed, and returns how long each took (the
// first byte's round trip included, as in the setup figures); failures
// are counted in *errs.
func setupsUntil(t *topology, stop <-chan struct{}, errs *int) []time.Duration {
	var took []time.Duration
	tick := time.NewTicker(loadedEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return took
		case <-tick.C:
		}
		start := time.Now()
		c, err := t.dialTimeout(30 * time.Second)
		if err != nil {
			*errs++
			continue
		}
		took = append(took, time.Since(start))
		c.Close()
	}
}

// stallGrace is how long streams and download wait, beyond a second per
// MB, before they call a chain stalled.
var stallGrace = time.Minute

// streamsOver is streams over the connections dial opens.
func streamsOver(dial func() (net.Conn, error), n int, size int64) (time.Duration, float64, error) {
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := dial()
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return 0, 0, err
		}
		conns[i] = c
	}
	buf := make([]byte, 256<<10)
	errc := make(chan error, 2*n)
	took := make([]time.Duration, n) // each connection's, to its last byte back
	start := time.Now()
	// A chain that stalls fails the run rather than hanging it: stallGrace,
	// and a second per MB that all the connections carry each way.
	deadline := start.Add(stallGrace + time.Duration(int64(n)*size/1e6)*time.Second)
	for _, c := range conns {
		c.SetDeadline(deadline)
	}
	for i, c := range conns {
		go func() { errc <- sendN(c, buf, size) }()
		go func() {
			_, err := io.CopyN(io.Discard, c, size)
			took[i] = time.Since(start)
			errc <- err
		}()
	}
	var all []error
	for i := 0; i < 2*n; i++ {
		if err := <-errc; err != nil {
			all = append(all, err)
			for _, c := range conns {
				c.Close()
			}
		}
	}
	d := time.Since(start)
	for _, c := range conns {
		c.Close()
	}
	return d, float64(slices.Min(took)) / float64(slices.Max(took)), errors.Join(all...)
}

// download asks the sink through t for size bytes one way (downloadMagic)
// and returns the time from the first byte to the last, and the bytes
// after the first read: a download's rate once under way, with nothing but
// the session's own frames going the other way, and no setup (a bound
// chain's SOCKS reply may come before its bridge side is set up).
func download(t *topology, size int64) (time.Duration, int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := t.connect(ctx) // the request is the first byte
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	// A chain that stalls fails the run rather than hanging it: stallGrace,
	// and a second per MB beyond.
	c.SetDeadline(time.Now().Add(stallGrace + time.Duration(size/1e6)*time.Second))
	if _, err := c.Write(downloadRequest(size)); err != nil {
		return 0, 0, err
	}
	buf := make([]byte, 256<<10)
	n, err := c.Read(buf)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, size-int64(n)), buf); err != nil {
		return 0, 0, err
	}
	return time.Since(start), size - int64(n), nil
}

// sendN writes size bytes from buf, over and over.
func sendN(c io.Writer, buf []byte, size int64) error {
	for size > 0 {
		n := min(int64(len(buf)), size)
		if _, err := c.Write(buf[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}
