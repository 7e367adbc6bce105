package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ptcombiner/ptcombiner/internal/procstat"
)

// startFree runs the same chain free (docs/free.md): ptcombiner-server
// --free and ptcombiner-client --proxy, standalone, so that every
// connection of the load generator is a stream of one session over one
// chained connection, and goes to the plain sink.
func (e *env) startFree(pt string, hops int) (*topology, error) {
	return e.startFreeFrom(e.binDir, "", pt, hops, linkShape{})
}

// startFreeFrom is startFree with the combiners of binDir, named build in
// the table (the PT programs are e.binDir's), and with the bridge behind
// the emulated link when link has a delay.
func (e *env) startFreeFrom(binDir, build, pt string, hops int, link linkShape) (*topology, error) {
	t := &topology{kind: "f", pt: pt, hops: hops, build: build}
	prog, opts := e.ptProgram(pt)
	alias := fmt.Sprintf("%s%d", pt, hops)
	flags := []string{"--plugin", pt + "=" + prog, "--chain", alias + "=" + t.chain(), "--log-level", "warn"}
	if e.streamWindow > 0 {
		flags = append(flags, "--stream-window", fmt.Sprint(e.streamWindow))
	}
	if e.sessionWindow != 0 {
		flags = append(flags, "--session-window", fmt.Sprint(e.sessionWindow))
	}
	config := e.dir("free-config")
	var line string
	for k, vs := range opts { // unprefixed: every hop
		for _, v := range vs {
			line += " " + k + "=" + v
		}
	}
	if line != "" {
		line = "ServerTransportOptions " + alias + line + "\n"
	}
	if err := os.WriteFile(config, []byte(line), 0o600); err != nil {
		return nil, err
	}
	server, err := startProgram(filepath.Join(binDir, "ptcombiner-server"), append(flags, "--config", config,
		"--listen", alias+"=127.0.0.1:0", "--free", "--allow", "127.0.0.0/8", "--state-dir", e.dir("free-server"))...)
	if err != nil {
		return nil, err
	}
	t.add(server.terminate)
	chain, err := server.expect("CHAIN") // alias addr ARGS args
	f := strings.Fields(chain)
	if err != nil || len(f) != 4 {
		t.run()
		return nil, fmt.Errorf("ptcombiner-server --free printed %q: %v", chain, err)
	}
	bridge := f[1]
	if link.oneWay > 0 {
		if bridge, err = t.overLink(bridge, link); err != nil {
			t.run()
			return nil, err
		}
	}
	client, err := startProgram(filepath.Join(binDir, "ptcombiner-client"), append(flags,
		"--proxy", "127.0.0.1:0="+alias+"@"+bridge, "--args", alias+"="+f[3])...)
	if err != nil {
		t.run()
		return nil, err
	}
	t.add(client.terminate)
	proxy, err := client.expect("PROXY") // alias addr -> bridge
	p := strings.Fields(proxy)
	if err != nil || len(p) != 4 {
		t.run()
		return nil, fmt.Errorf("ptcombiner-client --proxy printed %q: %v", proxy, err)
	}
	t.socks, t.target = p[1], e.sinkPlain
	t.client, t.server = client.pid(), server.pid()
	t.pts = func() []int { return append(procstat.Children(t.client), procstat.Children(t.server)...) }
	// The client joins each application connection to its stream (a
	// copy) and the chain as for (a); the server each stream to its
	// destination, and the chain as for (a).
	t.splicesClient, t.splicesServer = hops, hops+1
	return t, nil
}

// measureOverLink measures each chain again, bound and free, with the
// bridge behind each emulated link of p.links (delayLink): on loopback a
// round trip costs next to nothing, so a fresh chained connection's
// handshakes cost little more than a stream's; on a link they are what
// it costs. Then the streams, as over loopback: over a link one stream's
// throughput is bounded by its window over the round trip (TCP's own for
// a bound connection; the session's stream window, --stream-window, for a
// free one), or by the link's rate. No memory figures: the link's copies
// would blur them.
func measureOverLink(e *env, pts []string, hops []int, p params) ([]row, error) {
	if p.linkSetups <= 0 || !p.free {
		return nil, nil
	}
	lp := params{setups: p.linkSetups, size: p.linkSize, streamSize: p.streamSize, streams: p.streams, down: true, loaded: true}
	var rows []row
	for _, link := range p.links {
		for _, pt := range pts {
			kind := map[string]string{"test": "a", "obfs4": "b"}[pt]
			if pt == "obfs4" && e.obfs4proxy == "" {
				continue
			}
			for _, n := range hops {
				bound, err := e.startCombiners(kind, pt, n, e.sinkExt, e.cookie)
				if err != nil {
					return nil, err
				}
				if bound.target, err = bound.overLink(bound.target, link); err != nil {
					bound.run()
					return nil, err
				}
				free, err := e.startFreeFrom(e.binDir, "", pt, n, link)
				if err != nil {
					bound.run()
					return nil, err
				}
				group := []*topology{bound, free}
				rs, err := measureGroup(group, lp, func(t *topology, s string) {
					fmt.Fprintf(os.Stderr, "  %-36s %s\n", t.name(), s)
				})
				closeGroup(group)
				if err != nil {
					return nil, err
				}
				for i, t := range group {
					rows = append(rows, row{t, rs[i]})
				}
			}
		}
	}
	return rows, nil
}

// linkRatios prints each link's rows, free against bound, against issue
// 14's targets: what a new stream adds (its setup beyond its first byte's
// round trip, which any connection pays) at most 0.2x a fresh chained
// connection's setup; 1 stream at least 0.9x; 8 streams within 20%.
func linkRatios(rows []row, p params) {
	bound := map[string]*row{}
	for i := range rows {
		if rw := &rows[i]; rw.t.kind != "f" {
			bound[rw.t.link.String()+" "+rw.t.chain()] = rw
		}
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	var shown linkShape
	for i := range rows {
		f := &rows[i]
		a := bound[f.t.link.String()+" "+f.t.chain()]
		if f.t.kind != "f" || a == nil || a.r.p50 == 0 || f.r.p50 == 0 {
			continue
		}
		if f.t.link != shown {
			shown = f.t.link
			fmt.Printf("\nOver an emulated link of %v between the user's side and the bridge (delayLink: each byte held\n", shown)
			fmt.Printf("%v each way, a TCP handshake's round trip per connection", shown.oneWay)
			if shown.rate > 0 {
				fmt.Printf(", each direction a bottleneck of that rate shared by every\nconnection, with a queue of 1.5 round trips' bytes per connection")
			}
			fmt.Printf("), free (f) against bound (a, b), %d setups each and\n", p.linkSetups)
			each := p.linkSize / 4 / int64(p.streams)
			if p.streamSize > 0 {
				each = p.streamSize
			}
			fmt.Printf("%s each way for the single stream and %s for each of the %d, over 4 rounds (MB/s each way).\n", bytesString(p.linkSize), bytesString(4*each), p.streams)
			fmt.Printf("A fresh chained connection pays its TCP and PT handshakes in the link's round trips; a new\n")
			fmt.Printf("stream of the open session only its first byte's.\n")
			fmt.Printf("Targets: what a new stream adds (its setup p50 less its byte round trip on an open stream, RTT)\n")
			fmt.Printf("<= 0.2x a chained connection's setup p50; 1 stream >= 0.9x; the %d streams' evenness >= 0.8.\n", p.streams)
			fmt.Printf("\"1 stream\" is echoed, bulk both ways at once; \"1 down\" one way, the sink sending, as a download\n")
			fmt.Printf("(a window update then waits behind no bulk going the other way).\n")
			fmt.Printf("\"x bound adds\" is against what the chained connection adds in the same way (its setup less its RTT).\n")
			fmt.Printf("\"setup under load\": the p50 of a setup every %v while the %d streams run (no target).\n", loadedEvery, p.streams)
			fmt.Printf("%-22s %17s %11s %9s %9s %9s %15s %8s %13s %8s %15s %12s %17s\n", "chain", "setup p50 ms", "stream adds", "adds", "adds x", "RTT ms", "1 stream MB/s", "1 stream", "1 down MB/s", "1 down", fmt.Sprintf("%d streams MB/s", p.streams), "evenness", "setup under load")
			fmt.Printf("%-22s %17s %11s %9s %9s %9s %15s %8s %13s %8s %15s %12s %17s\n", "", "free|bound", "ms", "x bound", "bound adds", "free|bound", "free|bound", "x bound", "free|bound", "x bound", "free|bound", "free|bound", "ms free|bound")
		}
		adds := f.r.p50 - f.r.rtt
		x := float64(adds) / float64(a.r.p50)
		vsAdds := "-"
		if boundAdds := a.r.p50 - a.r.rtt; boundAdds > 0 {
			vsAdds = fmt.Sprintf("%.3f", float64(adds)/float64(boundAdds))
		}
		single := "-"
		if a.r.single > 0 {
			single = fmt.Sprintf("%.2f %s", f.r.single/a.r.single, verdict(f.r.single >= 0.9*a.r.single))
		}
		down := "-"
		if a.r.down > 0 {
			down = fmt.Sprintf("%.2f %s", f.r.down/a.r.down, verdict(f.r.down >= 0.9*a.r.down))
		}
		fmt.Printf("(f) %-18s %8.2f|%-8.2f %11.2f %5.3f %-3s %9s %5.1f|%-5.1f %7.1f|%-7.1f %-11s %6.1f|%-6.1f %-11s %7.1f|%-7.1f %4.2f|%-4.2f %-7s %8.1f|%-8.1f\n", f.t.chain(),
			ms(f.r.p50), ms(a.r.p50), ms(adds), x, verdict(x <= 0.2), vsAdds, ms(f.r.rtt), ms(a.r.rtt),
			f.r.single, a.r.single, single, f.r.down, a.r.down, down, f.r.multi, a.r.multi, f.r.fair, a.r.fair, verdict(f.r.fair >= 0.8 || p.linkSize == 0),
			ms(f.r.loaded), ms(a.r.loaded))
		if n := f.r.loadedErrs + a.r.loadedErrs; n > 0 {
			fmt.Printf("    %d|%d setups under load failed\n", f.r.loadedErrs, a.r.loadedErrs)
		}
	}
}
