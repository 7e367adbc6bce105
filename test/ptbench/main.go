// Command ptbench measures what a chain costs and what share of that cost is
// the combiners'. In one run, for chains of 1, 2 and 3 hops, it measures
//
//	(a) the project's test PT (key 0: an identity transform) through
//	    ptcombiner-client and ptcombiner-server;
//	(b) obfs4proxy's obfs4 through the combiners;
//	(c) the reference: the same PT programs, run the same way, wired by a
//	    minimal hand-made relay (relay.go), the least any combiner must do;
//	(d) raw loopback TCP;
//	(e) the combiners' own in-process transports (--builtin): the chains
//	    obfs4|obfs4 and obfs3|obfs4 (-inproc), two processes and no child,
//	    against (c) over obfs4proxy's obfs4|obfs4 and obfs3|obfs4;
//	(f) each chain of (a) and (b) free (docs/free.md): every connection a
//	    stream of one session over one chained connection (-free);
//	(g) the floor of (e): each of its transports alone, client and server
//	    in one process (a helper) over one loopback TCP connection;
//
// single-stream throughput, aggregate throughput of 8 streams, setup latency
// (p50, p90, p99) to the first byte back, CPU seconds per GiB per splice point of
// the combiner (or relay) processes, and resident memory and descriptors per
// idle chained connection. It prints a table and the ratios (a)/(c) and
// (b)/(c) against the targets of docs/performance.md, and (f) against (a)
// and (b), and (e) against (c) and (g), then holds 10,000 chained
// connections at once.
//
// Every connection ends at an echo sink run as a separate process (an
// Extended ORPort for the combiners, as a bridge's tor is; plain TCP for
// the reference and raw TCP). `make ptbench` builds everything and runs it.
package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// logger receives the children's logs: nothing, unless -v.
var logger = slog.New(slog.NewTextHandler(io.Discard, nil))

func main() {
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		helperMain(os.Args[1], os.Args[2:])
		return
	}
	binDir := flag.String("bin", "bin", "directory holding ptcombiner-client, ptcombiner-server and testpt")
	otherDir := flag.String("other", "", "directory holding another build of ptcombiner-client and ptcombiner-server, measured alongside (interleaved) to compare two builds in one run")
	hopList := flag.String("hops", "1,2,3", "chain lengths to measure")
	ptList := flag.String("pts", "test,obfs4", "PTs to chain: test (the project's test PT), obfs4 (obfs4proxy, when installed)")
	sizeMiB := flag.Int("size", 256, "MiB each way for the single stream (the streams share as many); 0 skips the streams and the CPU figures")
	nStreams := flag.Int("streams", 8, "concurrent streams for the aggregate throughput")
	setups := flag.Int("setups", 500, "connections set up one after another for the setup latency")
	idle := flag.Int("idle", 1000, "idle chained connections held open for the memory figure")
	hold := flag.Int("hold", 10000, "chained connections (2 hops, test PT) held at once at the end; 0 skips")
	holdOnly := flag.Bool("hold-only", false, "only hold the -hold connections: no table")
	refList := flag.String("ref", "loop,splice", "reference relays: loop (c: read and write through a buffer), splice (c': io.Copy)")
	refPublic := flag.Bool("ref-public", false, "give the reference relay a public listener in front of the outermost PT, as ptcombiner-server has (with -ref splice, io.Copy's pipes take 24 descriptors per idle 3-hop connection: lower -idle or use -ref loop)")
	free := flag.Bool("free", true, "measure each chain free too (f): --proxy and --free, every connection a stream of one session (docs/free.md)")
	inprocList := flag.String("inproc", "obfs4|obfs4,obfs3|obfs4", "in-process chains (e) of builtin transports, comma separated, each against (c) over the same obfs4proxy chain and its floor (g); \"\" for none")
	profile := flag.String("profile-inproc", "", "after the table, write a Go CPU profile of the in-process engines (client and server in one process) carrying -profile-chain under bulk load (one stream, -size MiB each way) to `FILE`")
	profileChain := flag.String("profile-chain", "obfs4|obfs4", "the chain of builtin methods -profile-inproc profiles")
	verbose := flag.Bool("v", false, "show every process's log")
	linkList := flag.String("links", "20ms,100ms@50", "emulated links between the user's side and the bridge, over which each chain is measured again, bound (a, b) and free (f): RTT[@MBIT/S], comma separated; \"\" for none")
	linkSetups := flag.Int("link-setups", 100, "setups over each emulated link (-links), per topology")
	streamWindow := flag.Int("stream-window", 0, "the free topologies' --stream-window in KiB, both ends; 0: the programs' default")
	sessionWindow := flag.Int("session-window", 0, "the free topologies' --session-window in KiB, both ends; 0: the programs' default; -1: none")
	linkSize := flag.Int("link-size", 32, "MiB each way for the single stream over each emulated link (-links), over 4 rounds; 0 skips the streams there")
	linkStreamSize := flag.Int("link-stream-size", 0, "MiB each way each of the -streams concurrent streams carries per round over each emulated link; 0: they share the single stream's round (-link-size/4), which makes them short against a stream window")
	flag.DurationVar(&slowSetup, "slow", 0, "report every setup slower than this (to chase stalls)")
	flag.Parse()
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var hops []int
	for _, s := range strings.Split(*hopList, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 8 {
			fail(fmt.Errorf("-hops: %q is not a chain length 1-8", s))
		}
		hops = append(hops, n)
	}
	p := params{size: int64(*sizeMiB) << 20, streams: *nStreams, setups: *setups, idle: *idle, holdOnly: *holdOnly, free: *free}
	p.profile, p.profileChain = *profile, *profileChain
	p.linkSetups, p.linkSize, p.streamSize = *linkSetups, int64(*linkSize)<<20, int64(*linkStreamSize)<<20
	var err error
	if p.links, err = parseLinks(*linkList); err != nil {
		fail(err)
	}
	if p.inproc, err = parseInproc(*inprocList); err != nil {
		fail(err)
	}
	refs := strings.Split(*refList, ",")
	for _, r := range refs {
		if r != "loop" && r != "splice" {
			fail(fmt.Errorf("-ref: %q is neither loop nor splice", r))
		}
	}
	var pts []string
	for _, pt := range strings.Split(*ptList, ",") {
		pt = strings.TrimSpace(pt)
		if pt != "test" && pt != "obfs4" {
			fail(fmt.Errorf("-pts: %q is neither test nor obfs4", pt))
		}
		pts = append(pts, pt)
	}
	p.streamWindow = *streamWindow
	p.sessionWindow = *sessionWindow
	if err := run(*binDir, *otherDir, hops, pts, refs, *refPublic, p, *hold); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ptbench:", err)
	os.Exit(1)
}

// row is one measured topology.
type row struct {
	t *topology
	r *result
}

func run(binDir, otherDir string, hops []int, pts, refs []string, refPublic bool, p params, hold int) error {
	binDir, _ = filepath.Abs(binDir)
	for _, b := range []string{"ptcombiner-client", "ptcombiner-server", "testpt"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("%s not built (make build): %w", b, err)
		}
	}
	if otherDir != "" {
		otherDir, _ = filepath.Abs(otherDir)
		for _, b := range []string{"ptcombiner-client", "ptcombiner-server"} {
			if _, err := os.Stat(filepath.Join(otherDir, b)); err != nil {
				return fmt.Errorf("-other: %w", err)
			}
		}
	}
	work, err := os.MkdirTemp("", "ptbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// Interrupted (Ctrl-C on make ptbench), it takes its work directory
	// along; the processes it started end as their stdin closes with it.
	interrupted := make(chan os.Signal, 1)
	signal.Notify(interrupted, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig, ok := <-interrupted
		if !ok {
			return
		}
		os.RemoveAll(work)
		fmt.Fprintln(os.Stderr, "ptbench: stopped by", sig)
		os.Exit(130)
	}()
	defer func() {
		signal.Stop(interrupted) // no more sends, then the goroutine may go
		close(interrupted)
	}()
	e := &env{binDir: binDir, otherDir: otherDir, work: work, cookie: filepath.Join(work, "cookie"), refPublic: refPublic, streamWindow: p.streamWindow, sessionWindow: p.sessionWindow}
	if path, err := exec.LookPath("obfs4proxy"); err == nil {
		e.obfs4proxy = path
	}
	sink, err := startHelper("sink", e.cookie)
	if err != nil {
		return err
	}
	defer sink.close()
	if e.sinkPlain, err = sink.expect("PLAIN"); err != nil {
		return err
	}
	if e.sinkExt, err = sink.expect("EXT"); err != nil {
		return err
	}

	started := time.Now()
	if p.holdOnly {
		if err := holdMany(e, hold); err != nil {
			return err
		}
		footer(started)
		return nil
	}
	if refPublic {
		fmt.Println("The reference relays own a public listener in front of the outermost PT, as ptcombiner-server does.")
	}
	header()
	var rows []row
	// measure runs a group of topologies that carry the same chain, and
	// closes them.
	measure := func(group []*topology) error {
		defer func() {
			for _, t := range group {
				t.run()
			}
		}()
		rs, err := measureGroup(group, p, func(t *topology, s string) {
			fmt.Fprintf(os.Stderr, "  %-36s %s\n", t.name(), s)
		})
		if err != nil {
			return err
		}
		for i, t := range group {
			rows = append(rows, row{t, rs[i]})
			printRow(t, rs[i])
		}
		return nil
	}
	inprocDone := map[string]bool{} // the in-process chains measured
	if err := measure([]*topology{{kind: "d", target: e.sinkPlain}}); err != nil {
		return err
	}
	for _, pt := range pts {
		kind := map[string]string{"test": "a", "obfs4": "b"}[pt]
		if pt == "obfs4" && e.obfs4proxy == "" {
			fmt.Println("(b) skipped: obfs4proxy is not installed (apt-get install obfs4proxy)")
			continue
		}
		for _, n := range hops {
			var group []*topology
			for _, mode := range refs {
				t, err := e.startReference(pt, n, mode)
				if err != nil {
					closeGroup(group)
					return err
				}
				group = append(group, t)
			}
			t, err := e.startCombiners(kind, pt, n, e.sinkExt, e.cookie)
			if err != nil {
				closeGroup(group)
				return err
			}
			group = append(group, t)
			if e.otherDir != "" {
				t, err := e.startCombinersFrom(e.otherDir, "other", kind, pt, n, e.sinkExt, e.cookie)
				if err != nil {
					closeGroup(group)
					return err
				}
				group = append(group, t)
			}
			if p.free {
				t, err := e.startFree(pt, n)
				if err != nil {
					closeGroup(group)
					return err
				}
				group = append(group, t)
				if e.otherDir != "" {
					t, err := e.startFreeFrom(e.otherDir, "other", pt, n, linkShape{})
					if err != nil {
						closeGroup(group)
						return err
					}
					group = append(group, t)
				}
			}
			for _, c := range p.inproc {
				if strings.Join(c, "|") != strings.Join(repeatPT(pt, n), "|") || inprocDone[strings.Join(c, "|")] {
					continue
				}
				inprocDone[strings.Join(c, "|")] = true
				var err error
				if group, err = e.addInProcess(group, c); err != nil {
					return err
				}
			}
			if err := measure(group); err != nil {
				return err
			}
		}
	}
	if err := measureInproc(e, p, refs, inprocDone, measure, func(rw row) {
		rows = append(rows, rw)
		printRow(rw.t, rw.r)
	}); err != nil {
		return err
	}
	linkRows, err := measureOverLink(e, pts, hops, p)
	if err != nil {
		return err
	}
	ratios(rows)
	freeRatios(rows)
	linkRatios(linkRows, p)
	inprocRatios(rows)
	rows = append(rows, linkRows...) // their errors count
	if p.profile != "" && p.size > 0 {
		if err := profileInproc(e, p.profileChain, p.profile, p); err != nil {
			return err
		}
	}
	errs := 0
	for _, rw := range rows {
		if rw.t.stalls {
			if n := rw.r.setupErrs + rw.r.idleErrs; n > 0 || rw.t.stalled.Load() > 0 {
				fmt.Printf("\n%s: %d connections failed and %d dials were tried again: obfs4proxy's known stall with obfs3 inside obfs4 (PROTOCOLS.md A), not counted as errors of the run\n",
					rw.t.name(), n, rw.t.stalled.Load())
			}
			continue
		}
		errs += rw.r.setupErrs + rw.r.idleErrs
	}
	if hold > 0 {
		if err := holdMany(e, hold); err != nil {
			return err
		}
	}
	footer(started)
	if errs > 0 {
		return fmt.Errorf("%d connections failed (the errors column)", errs)
	}
	return nil
}

// footer prints the date, the machine and how long the run took.
func footer(started time.Time) {
	fmt.Printf("\n%s, %d CPUs, %s; the run took %v.\n", time.Now().Format("2006-01-02"), runtime.NumCPU(), runtime.Version(),
		time.Since(started).Round(time.Second))
}

func closeGroup(group []*topology) {
	for _, t := range group {
		t.run()
	}
}

func header() {
	fmt.Printf("%-36s %8s %9s %7s %7s %7s %11s %11s %9s %13s %9s %6s\n", "", "1 stream", "8 streams", "setup", "setup", "setup", "CPU ms", "CPU s/GiB", "chain CPU", "RSS KiB/conn", "fds/conn", "")
	fmt.Printf("%-36s %8s %9s %7s %7s %7s %11s %11s %9s %13s %9s %6s\n", "topology", "MB/s", "MB/s", "p50 ms", "p90 ms", "p99 ms", "/setup c|s", "/splice c|s", "s/GiB", "c|s", "c|s", "errors")
}

func printRow(t *topology, r *result) {
	setupCPU, cpu, all, rss, fds := "-", "-", "-", "-", "-"
	if t.client != 0 {
		setupCPU = fmt.Sprintf("%.2f|%.2f", r.setupCPUClient, r.setupCPUServer)
	}
	if t.client != 0 && r.gib > 0 && t.splicesClient > 0 {
		cpu = fmt.Sprintf("%.2f|%.2f", r.cpuPerSplice(r.cpuClient, t.splicesClient), r.cpuPerSplice(r.cpuServer, t.splicesServer))
	}
	if (t.client != 0 || t.kind == "g") && r.gib > 0 {
		all = fmt.Sprintf("%.2f", chainCPU(r))
	}
	if t.client != 0 {
		rss = fmt.Sprintf("%.1f|%.1f", r.rssClient, r.rssServer)
		fds = fmt.Sprintf("%.0f|%.0f", r.fdsClient, r.fdsServer)
	}
	setup := [3]string{"-", "-", "-"}
	for i, d := range []time.Duration{r.p50, r.p90, r.p99} {
		if t.kind != "g" || i == 0 {
			setup[i] = fmt.Sprintf("%.2f", ms(d))
		}
	}
	fmt.Printf("%-36s %8.0f %9.0f %7s %7s %7s %11s %11s %9s %13s %9s %6d\n", t.name(), r.single, r.multi,
		setup[0], setup[1], setup[2], setupCPU, cpu, all, rss, fds, r.setupErrs+r.idleErrs)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ratios compares each combiner row with the reference rows of the same PT
// and length, against the targets.
func ratios(rows []row) {
	fmt.Printf("\nCombiners against the reference relays (same PT processes, same run). Targets against (c):\n")
	fmt.Printf("throughput >= 0.95x (2 and 3 hops), CPU per splice point <= 0.6x, setup <= +0.3 ms p50 per hop,\n")
	fmt.Printf("RSS <= 32 KiB per idle connection per hop. (c') is the same relay with io.Copy, which splices.\n")
	fmt.Printf("%-22s %9s %9s %13s %13s %11s %11s %17s\n", "", "1 stream", "8 streams", "CPU/splice", "CPU/splice", "setup p50", "setup p50", "RSS KiB/conn/hop")
	fmt.Printf("%-22s %9s %9s %13s %13s %11s %11s %17s\n", "chain", "x (c)", "x (c)", "c|s x (c)", "c|s x (c')", "+ms/hop (c)", "+ms/hop (c')", "client|server")
	refs := map[string]*row{}
	for i := range rows {
		rw := &rows[i]
		if rw.t.kind == "c" || rw.t.kind == "c'" {
			refs[rw.t.kind+" "+rw.t.chain()] = rw
		}
	}
	ratio := func(x, y float64) float64 {
		if y == 0 {
			return 0
		}
		return x / y
	}
	for i := range rows {
		rw := &rows[i]
		if rw.t.kind != "a" && rw.t.kind != "b" {
			continue
		}
		a, h := rw.r, rw.t.hops
		cpu := func(ref *row) string {
			if ref == nil {
				return "-"
			}
			return fmt.Sprintf("%.2f|%.2f",
				ratio(a.cpuPerSplice(a.cpuClient, rw.t.splicesClient), ref.r.cpuPerSplice(ref.r.cpuClient, ref.t.splicesClient)),
				ratio(a.cpuPerSplice(a.cpuServer, rw.t.splicesServer), ref.r.cpuPerSplice(ref.r.cpuServer, ref.t.splicesServer)))
		}
		setup := func(ref *row) string {
			if ref == nil {
				return "-"
			}
			return fmt.Sprintf("%+.3f", ms(a.p50-ref.r.p50)/float64(h))
		}
		c := refs["c "+rw.t.chain()]
		c2 := refs["c' "+rw.t.chain()]
		single, multi := "-", "-"
		if c != nil {
			single, multi = fmt.Sprintf("%.2f", ratio(a.single, c.r.single)), fmt.Sprintf("%.2f", ratio(a.multi, c.r.multi))
		}
		label := rw.t.chain()
		if rw.t.build != "" {
			label += " (" + rw.t.build + ")"
		}
		fmt.Printf("(%s) %-18s %9s %9s %13s %13s %11s %11s %17s\n", rw.t.kind, label, single, multi,
			cpu(c), cpu(c2), setup(c), setup(c2), fmt.Sprintf("%.1f|%.1f", a.rssClient/float64(h), a.rssServer/float64(h)))
		if a.cpuAll > 0 {
			fmt.Printf("%-22s the combiners spent %.2f of the chain's %.2f CPU s per GiB each way (%.1f%%)\n", "",
				(a.cpuClient+a.cpuServer)/(a.gib/2), a.cpuAll/(a.gib/2), 100*(a.cpuClient+a.cpuServer)/a.cpuAll)
		}
	}
}

// freeRatios compares each free row with the combiners' bound row of the
// same chain, against issue 14's targets.
func freeRatios(rows []row) {
	bound := map[string]*row{}
	for i := range rows {
		if rw := &rows[i]; (rw.t.kind == "a" || rw.t.kind == "b") && rw.t.build == "" {
			bound[rw.t.chain()] = rw
		}
	}
	header := false
	for i := range rows {
		f := &rows[i]
		a := bound[f.t.chain()]
		if f.t.kind != "f" || a == nil || a.r.p50 == 0 {
			continue
		}
		if !header {
			fmt.Printf("\nFree sessions (f) against bound chained connections (a, b) over the same chain. Targets: a new\n")
			fmt.Printf("stream's setup <= 0.2x a chained connection's (p50), 1 stream >= 0.9x, the 8 streams within 20%%\n")
			fmt.Printf("of each other (the shortest one's time over the longest's >= 0.8). A setup's p50 ends with its\n")
			fmt.Printf("first byte's round trip; \"beyond 1 RTT\" takes off each one's byte round trip on an open\n")
			fmt.Printf("connection (RTT p50 ms, free|bound): what the setup itself adds (no target).\n")
			fmt.Printf("%-22s %11s %9s %9s %13s %13s %12s %13s\n", "chain", "setup p50", "1 stream", "8 streams", "8 streams", "8 streams", "setup beyond", "RTT p50 ms")
			fmt.Printf("%-22s %11s %9s %9s %13s %13s %12s %13s\n", "", "x bound", "x bound", "x bound", "evenness (f)", "evenness bound", "1 RTT x bound", "free|bound")
			header = true
		}
		beyond := "-"
		if fs, as := f.r.p50-f.r.rtt, a.r.p50-a.r.rtt; f.r.rtt > 0 && a.r.rtt > 0 && as > 0 {
			beyond = fmt.Sprintf("%.2f", float64(fs)/float64(as))
		}
		ratio := func(x, y float64) string { // "-" without streams (-size 0)
			if y == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", x/y)
		}
		label := f.t.chain()
		if f.t.build != "" {
			label += " (" + f.t.build + ")"
		}
		fmt.Printf("(f) %-18s %11.2f %9s %9s %13.2f %13.2f %12s %6.2f|%-6.2f\n", label, float64(f.r.p50)/float64(a.r.p50),
			ratio(f.r.single, a.r.single), ratio(f.r.multi, a.r.multi), f.r.fair, a.r.fair, beyond, ms(f.r.rtt), ms(a.r.rtt))
	}
}

// nofile is this process's limit on open descriptors; its children (Go
// programs raise their soft limit to the hard one) get the hard limit.
func nofile() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	return int(l.Max)
}
