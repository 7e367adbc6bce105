package main

// The in-process rows: (e) chains of the combiners' own transports
// (--builtin), which start no child, against the same chains of obfs4proxy
// programs wired by the reference relay (c); and (g) the floor, each of
// those transports alone, client and server in one process over one
// loopback TCP connection, which is what the chain's hops cost before any
// combiner joins them.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/transport"
)

// parseInproc reads -inproc: chains of builtin methods, comma separated
// ("obfs4|obfs4,obfs3|obfs4"); "" is none.
func parseInproc(s string) ([][]string, error) {
	var chains [][]string
	builtin := transport.BuiltinMethods(true)
	for _, c := range strings.Split(s, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		hops := strings.Split(c, "|")
		for _, h := range hops {
			if !slices.Contains(builtin, h) {
				return nil, fmt.Errorf("-inproc: %q in %q is none of the builtin methods with a server side %v", h, c, builtin)
			}
		}
		chains = append(chains, hops)
	}
	return chains, nil
}

// startInProcess runs ptcombiner-server and ptcombiner-client for the chain
// hopPTs (innermost first) of in-process transports (--builtin): the two
// processes are the whole chain.
func (e *env) startInProcess(hopPTs []string, sinkExt, cookie string) (*topology, error) {
	return e.startInProcessFrom(e.binDir, "", hopPTs, sinkExt, cookie)
}

// startInProcessFrom is startInProcess with the combiners of binDir, named
// build in the table.
func (e *env) startInProcessFrom(binDir, build string, hopPTs []string, sinkExt, cookie string) (*topology, error) {
	t := &topology{kind: "e", pt: hopPTs[0], hops: len(hopPTs), hopPTs: hopPTs, build: build}
	var methods []string
	for _, m := range hopPTs {
		if !slices.Contains(methods, m) {
			methods = append(methods, m)
		}
	}
	alias := "in_" + strings.Join(hopPTs, "_")
	flags := []string{"--builtin", strings.Join(methods, ","), "--chain", alias + "=" + t.chain()}
	if err := e.startPair(t, binDir, flags, alias, nil, sinkExt, cookie); err != nil {
		return nil, err
	}
	// No splice point: each combiner carries the bytes through its
	// transports' framing and crypto (the CPU per splice point shows "-").
	return t, nil
}

// measureFloor runs the floor helper for method: the same streams as the
// chains' (rounds of one stream, then p.streams), within one process.
func measureFloor(method string, p params) (*topology, *result, error) {
	t := &topology{kind: "g", pt: method, hops: 1, hopPTs: []string{method}}
	r := &result{}
	if p.size == 0 {
		return t, r, nil
	}
	h, err := startHelper("floor", method, strconv.FormatInt(p.size, 10), strconv.Itoa(p.streams))
	if err != nil {
		return nil, nil, err
	}
	defer h.close()
	line, err := h.expectWithin("FLOOR", 10*time.Minute)
	if err != nil {
		return nil, nil, err
	}
	if _, err := fmt.Sscan(line, &r.single, &r.multi, &r.cpuAll, &r.gib, &r.p50); err != nil {
		return nil, nil, fmt.Errorf("floor %s said %q: %w", method, line, err)
	}
	return t, r, nil
}

// runFloor is the floor helper: `ptbench floor METHOD SIZE STREAMS`. It
// serves METHOD on loopback and dials it, both in this process through
// package transport, and carries the streams the chains carry (4 rounds of
// one stream of SIZE/4 bytes each way, then STREAMS sharing as many),
// echoed by the server; then it prints "FLOOR" with the single and
// aggregate MB/s each way, its own CPU seconds while the streams ran, the
// GiB they moved (both ways) and the median of 51 setups (the dial, up to
// the end of the client's handshake) in nanoseconds.
func runFloor(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: floor METHOD SIZE STREAMS")
	}
	method := args[0]
	size, err1 := strconv.ParseInt(args[1], 10, 64)
	n, err2 := strconv.Atoi(args[2])
	if err := errors.Join(err1, err2); err != nil || size <= 0 || n <= 0 {
		return fmt.Errorf("floor: bad size or streams %q: %v", args[1:], err)
	}
	state, err := os.MkdirTemp("", "ptbench-floor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	dial, stop, err := floorChain(method, state)
	if err != nil {
		return err
	}
	defer stop()
	for k := 0; k < 5; k++ { // warm up, as the chains are
		c, err := dial()
		if err != nil {
			return fmt.Errorf("floor %s: warm-up: %w", method, err)
		}
		c.Close()
	}
	// Setup: each connection's handshake alone, one after another.
	lat := make([]time.Duration, 0, 51)
	for k := 0; k < cap(lat); k++ {
		start := time.Now()
		c, err := dial()
		if err != nil {
			return fmt.Errorf("floor %s: setup: %w", method, err)
		}
		lat = append(lat, time.Since(start))
		c.Close()
	}
	slices.Sort(lat)
	const rounds = 4
	part := size / rounds
	var single, multi time.Duration
	var cpu float64
	for round := 0; round < rounds; round++ {
		c0 := procstat.CPUSeconds(os.Getpid())
		d, _, err := streamsOver(dial, 1, part)
		if err != nil {
			return fmt.Errorf("floor %s: single stream: %w", method, err)
		}
		single += d
		if d, _, err = streamsOver(dial, n, part/int64(n)); err != nil {
			return fmt.Errorf("floor %s: %d streams: %w", method, n, err)
		}
		multi += d
		cpu += procstat.CPUSeconds(os.Getpid()) - c0
	}
	fmt.Printf("FLOOR %f %f %f %f %d\n", float64(part*rounds)/single.Seconds()/1e6, float64(part*rounds)/multi.Seconds()/1e6,
		cpu, float64(4*part*rounds)/(1<<30), lat[len(lat)/2])
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// floorChain serves method in process on a loopback listener that echoes
// every connection, and returns a dial function for it and a stop.
func floorChain(method, state string) (func() (net.Conn, error), func(), error) {
	ctx := context.Background()
	st, err := transport.BuiltinServer(method)
	if err != nil {
		return nil, nil, err
	}
	srv, err := st.Start(ctx, transport.ServerConfig{StateDir: filepath.Join(state, "server")})
	if err != nil {
		return nil, nil, err
	}
	cl, err := transport.BuiltinClient().Start(ctx, transport.ClientConfig{Methods: []string{method}, StateDir: filepath.Join(state, "client")})
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	ln, err := loopback.ListenTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		cl.Close()
		srv.Close()
		return nil, nil, err
	}
	l := transport.Listen(srv, ln)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	d, addr, args := cl.Dialers()[method], l.Addr().String(), srv.ClientArgs()
	under := func(ctx context.Context, addr string) (net.Conn, error) {
		return loopback.Dialer(addr).DialContext(ctx, "tcp", addr)
	}
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return d.Dial(ctx, args, addr, under)
	}
	stop := func() { l.Close(); cl.Close(); srv.Close() }
	return dial, stop, nil
}

// inprocRatios compares each in-process chain (e) with the reference relay
// (c) over the same chain of obfs4proxy programs, and with the floor (g):
// the sum of its hops' own costs. The targets are issue 13's.
func inprocRatios(rows []row) {
	refs, floors := map[string]*row{}, map[string]*row{}
	for i := range rows {
		switch rw := &rows[i]; rw.t.kind {
		case "c":
			refs[rw.t.chain()] = rw
		case "g":
			floors[rw.t.chain()] = rw
		}
	}
	header := false
	for i := range rows {
		rw := &rows[i]
		if rw.t.kind != "e" {
			continue
		}
		if !header {
			fmt.Printf("\nIn-process chains (e) against the reference relay (c) over the same chain of PT programs, and\n")
			fmt.Printf("against the floor (g): each hop alone, in process, over one TCP connection. Targets: 1 stream\n")
			fmt.Printf(">= 1.25x (c), chain CPU per GiB <= 0.8x (c), setup p50 <= 0.7x (c), RSS per idle connection of\n")
			fmt.Printf("all the chain's processes together <= 0.5x (c), chain CPU per GiB <= 1.15x the floor.\n")
			header = true
		}
		inprocBlock(rw, refs[rw.t.chain()], floors)
	}
}

// inprocBlock prints one in-process chain's acceptance lines.
func inprocBlock(e, c *row, floors map[string]*row) {
	a := e.r
	label := e.t.chain()
	if e.t.build != "" {
		label += " (" + e.t.build + " build)"
	}
	fmt.Printf("(e) %s: %d processes (%d children)", label, a.procs, max(0, a.procs-2))
	if a.gib > 0 {
		fmt.Printf("; ptcombiner-client %.2f + ptcombiner-server %.2f CPU s per GiB each way",
			a.cpuClient/(a.gib/2), a.cpuServer/(a.gib/2))
	}
	fmt.Println()
	line := func(what, unit string, got, ref float64, refName string, atMost bool, target float64) {
		if got == 0 || ref == 0 {
			fmt.Printf("    %-22s -\n", what)
			return
		}
		x := got / ref
		met := x >= target
		cmp := ">="
		if atMost {
			met, cmp = x <= target, "<="
		}
		verdict := "met"
		if !met {
			verdict = "MISSED"
		}
		fmt.Printf("    %-22s %9.2f %-6s against %9.2f %-16s %5.2fx, target %s %.2fx: %s\n", what, got, unit, ref, refName, x, cmp, target, verdict)
	}
	var cCPU float64
	if c != nil && c.r.gib > 0 {
		cCPU = c.r.cpuAll / (c.r.gib / 2)
	}
	if c != nil {
		line("1 stream", "MB/s", a.single, c.r.single, "(c)", false, 1.25)
		line("chain CPU per GiB", "s", chainCPU(a), cCPU, "(c)", true, 0.8)
		line("setup p50", "ms", ms(a.p50), ms(c.r.p50), "(c)", true, 0.7)
		line("RSS per idle conn", "KiB", a.rssAll, c.r.rssAll, fmt.Sprintf("(c, %d procs)", c.r.procs), true, 0.5)
	} else {
		fmt.Printf("    no reference (c) over %s in this run (obfs4proxy not installed?)\n", e.t.chain())
	}
	var floor float64
	var parts []string
	for _, h := range e.t.hopPTs {
		f := floors[h]
		if f == nil || f.r.gib == 0 {
			floor = 0
			break
		}
		floor += chainCPU(f.r)
		parts = append(parts, fmt.Sprintf("%s %.2f", h, chainCPU(f.r)))
	}
	line("chain CPU per GiB", "s", chainCPU(a), floor, "(g)", true, 1.15)
	if floor > 0 {
		fmt.Printf("    %-22s the floor is %s\n", "", strings.Join(parts, " + "))
	}
	// For orientation: the hops' own handshakes, each alone, no target.
	var setup time.Duration
	var setups []string
	for _, h := range e.t.hopPTs {
		if f := floors[h]; f != nil {
			setup += f.r.p50
			setups = append(setups, fmt.Sprintf("%s %.2f", h, ms(f.r.p50)))
		}
	}
	if len(setups) == len(e.t.hopPTs) && setup > 0 {
		fmt.Printf("    %-22s %9.2f ms     the hops' own setups alone (g): %s; no target\n", "setup p50 floor", ms(setup), strings.Join(setups, " + "))
	}
}

// chainCPU is the CPU seconds per GiB each way of every process of the
// chain.
func chainCPU(r *result) float64 {
	if r.gib == 0 {
		return 0
	}
	return r.cpuAll / (r.gib / 2)
}

// measureInproc measures the in-process chains that no group of -pts and
// -hops took (a mixed one, or a length -hops leaves out), each beside its
// references, then the floor of every method they use.
func measureInproc(e *env, p params, refs []string, done map[string]bool, measure func([]*topology) error, add func(row)) error {
	var methods []string
	for _, c := range p.inproc {
		for _, m := range c {
			if !slices.Contains(methods, m) {
				methods = append(methods, m)
			}
		}
		name := strings.Join(c, "|")
		if done[name] {
			continue
		}
		done[name] = true
		var group []*topology
		if e.obfs4proxy == "" {
			fmt.Printf("(c) skipped for %s: obfs4proxy is not installed (apt-get install obfs4proxy)\n", name)
		}
		for _, mode := range refs {
			if e.obfs4proxy == "" {
				break
			}
			t, err := e.startReferenceOf(c, mode)
			if err != nil {
				closeGroup(group)
				return err
			}
			group = append(group, t)
		}
		group, err := e.addInProcess(group, c)
		if err != nil {
			return err
		}
		if err := measure(group); err != nil {
			return err
		}
	}
	for _, m := range methods {
		fmt.Fprintf(os.Stderr, "  %-36s %s\n", "(g) floor, "+m+" alone", "streams in one process")
		t, r, err := measureFloor(m, p)
		if err != nil {
			return err
		}
		add(row{t, r})
	}
	return nil
}

// addInProcess adds the in-process chain c to group, and c from the -other
// build when there is one; on error it closes the group.
func (e *env) addInProcess(group []*topology, c []string) ([]*topology, error) {
	t, err := e.startInProcess(c, e.sinkExt, e.cookie)
	if err != nil {
		closeGroup(group)
		return nil, err
	}
	group = append(group, t)
	if e.otherDir != "" {
		if t, err = e.startInProcessFrom(e.otherDir, "other", c, e.sinkExt, e.cookie); err != nil {
			closeGroup(group)
			return nil, err
		}
		group = append(group, t)
	}
	return group, nil
}
