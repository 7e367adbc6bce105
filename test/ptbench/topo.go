package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// A topology is one way of carrying the load generator's connections to the
// echo sink: raw TCP, a chain through the combiners, or the same chain
// through the reference relay.
type topology struct {
	kind string // "a", "b", "c" (the reference), "c'" (the reference with splice), "d", "e" (in process), "f" (free) or "g" (floor)
	pt   string // "test" or "obfs4"; "" for raw TCP
	hops int
	// hopPTs, when set, are the chain's hops, innermost first, where
	// they differ (obfs3|obfs4); pt is then the first.
	hopPTs []string
	build  string // for the combiners: "" (-bin) or "other" (-other)
	// link, when set, is the emulated link between the user's side and
	// the bridge (delayLink, -links).
	link   linkShape
	socks  string // where the application connects; "" for raw TCP
	target string // the SOCKS target (the bridge), or the sink for raw TCP
	user   []byte // SOCKS credentials: the chain's arguments
	pass   []byte
	// The combiner (or reference relay) processes, client and server side,
	// whose CPU and memory are the figures of interest, and the PT
	// processes, for the combiner's share of the chain's whole CPU.
	client, server int
	pts            func() []int
	// Splice points: where the combiner (or relay) joins two connections.
	// The client joins the application to the innermost PT and each PT to
	// the next; ptcombiner-server also joins each client, on the public
	// listener it owns, to the outermost PT, which the reference leaves to
	// the outermost PT itself.
	splicesClient, splicesServer int
	// stalls: the chain is known to stall now and then (obfs4proxy's
	// obfs4 client with obfs3 inside, PROTOCOLS.md A), so the warm-up and
	// the streams try again, and its failed connections do not fail the
	// run; stalled counts the dials tried again.
	stalls  bool
	stalled atomic.Int64
	closers
}

func (t *topology) name() string {
	if t.link.oneWay > 0 {
		return fmt.Sprintf("%s, %v", t.baseName(), t.link)
	}
	return t.baseName()
}

func (t *topology) baseName() string {
	switch t.kind {
	case "d":
		return "(d) raw TCP"
	case "c":
		return fmt.Sprintf("(c) relay, loop, %s", t.chain())
	case "c'":
		return fmt.Sprintf("(c') relay, splice, %s", t.chain())
	case "f":
		if t.build != "" {
			return fmt.Sprintf("(f) free session (%s build), %s", t.build, t.chain())
		}
		return fmt.Sprintf("(f) free session, %s", t.chain())
	case "e":
		if t.build != "" {
			return fmt.Sprintf("(e) in process (%s), %s", t.build, t.chain())
		}
		return fmt.Sprintf("(e) in process, %s", t.chain())
	case "g":
		return fmt.Sprintf("(g) floor, %s alone", t.chain())
	default:
		if t.build != "" {
			return fmt.Sprintf("(%s) combiners (%s build), %s", t.kind, t.build, t.chain())
		}
		return fmt.Sprintf("(%s) combiners, %s", t.kind, t.chain())
	}
}

func (t *topology) chain() string {
	if len(t.hopPTs) > 0 {
		return strings.Join(t.hopPTs, "|")
	}
	if t.pt == "" {
		return "-"
	}
	return strings.TrimSuffix(strings.Repeat(t.pt+"|", t.hops), "|")
}

// overLink puts t's bridge, at addr, behind an emulated link (delayLink),
// closed with t, and returns where to reach it.
func (t *topology) overLink(addr string, shape linkShape) (string, error) {
	l, err := startDelayLink(addr, shape)
	if err != nil {
		return "", err
	}
	t.link = shape
	t.add(l.Close)
	return l.Addr(), nil
}

// env is what every topology shares: binaries, the sink, a work directory.
type env struct {
	binDir     string
	otherDir   string // -other: a second build of the combiners, measured alongside
	obfs4proxy string
	work       string
	cookie     string
	sinkPlain  string
	sinkExt    string
	counter    int
	// refPublic gives the reference relay a public listener in front of
	// the outermost PT, as ptcombiner-server has (-ref-public).
	refPublic bool
	// streamWindow, when set, is the free topologies' --stream-window
	// (KiB), both ends (-stream-window).
	streamWindow int
	// sessionWindow, when set, is the free topologies' --session-window
	// (KiB; -1: none), both ends (-session-window).
	sessionWindow int
	// diag, when set, hears what the combiners say (childLogs); they then
	// run at --log-level debug.
	diag *childLogs
}

// combinerSpec completes the spec of a combiner process named program:
// its logging, and the diagnostics of e.diag.
func (e *env) combinerSpec(program string, s ptproc.Spec) ptproc.Spec {
	s.Logger = logger
	if e.diag != nil {
		s.Args = append(append([]string(nil), s.Args...), "--log-level", "debug")
		s.Logger = slog.New(e.diag.handler(program, logger.Handler()))
		s.OnLog = e.diag.onLog(program)
	}
	return s
}

func (e *env) dir(name string) string {
	e.counter++
	return filepath.Join(e.work, fmt.Sprintf("%s-%d", name, e.counter))
}

// ptProgram returns the program for a PT kind, and the server options its
// hops get: the test PT with key 0 is an identity transform.
func (e *env) ptProgram(pt string) (path string, opts metadata.Args) {
	if pt == "test" {
		return filepath.Join(e.binDir, "testpt"), metadata.Args{"key": {"0"}}
	}
	return e.obfs4proxy, nil
}

// startCombiners runs ptcombiner-server and ptcombiner-client for a chain
// of hops copies of pt, as a bridge's and a user's tor would.
func (e *env) startCombiners(kind, pt string, hops int, sinkExt, cookie string) (*topology, error) {
	return e.startCombinersFrom(e.binDir, "", kind, pt, hops, sinkExt, cookie)
}

// startCombinersFrom is startCombiners with the combiners of binDir, named
// build in the table.
func (e *env) startCombinersFrom(binDir, build, kind, pt string, hops int, sinkExt, cookie string) (*topology, error) {
	t := &topology{kind: kind, pt: pt, hops: hops, build: build}
	prog, opts := e.ptProgram(pt)
	alias := fmt.Sprintf("%s%d", pt, hops)
	flags := []string{"--plugin", pt + "=" + prog, "--chain", alias + "=" + t.chain()}
	if err := e.startPair(t, binDir, flags, alias, opts, sinkExt, cookie); err != nil {
		return nil, err
	}
	t.splicesClient, t.splicesServer = hops, hops+1
	return t, nil
}

// startPair runs ptcombiner-server and ptcombiner-client of binDir with
// flags, serving the chain alias (with opts as its server options), and
// fills in t's addresses, credentials and processes.
func (e *env) startPair(t *topology, binDir string, flags []string, alias string, opts metadata.Args, sinkExt, cookie string) error {
	server, err := ptproc.Start(context.Background(), e.combinerSpec("ptcombiner-server", ptproc.Spec{
		Name: "ptcombiner-server", Path: filepath.Join(binDir, "ptcombiner-server"), Args: flags,
		Role: ptproc.Server, Methods: []string{alias}, StateDir: e.dir("server"),
		Options: map[string]metadata.Args{alias: opts}, ExtORPort: sinkExt, AuthCookieFile: cookie,
	}))
	if err != nil {
		return fmt.Errorf("ptcombiner-server: %w", err)
	}
	t.add(func() { server.Close() })
	sm, ok := server.ServerMethods()[alias]
	if !ok {
		t.run()
		return fmt.Errorf("ptcombiner-server offered no %s: %v", alias, server.MethodErrors())
	}
	client, err := ptproc.Start(context.Background(), e.combinerSpec("ptcombiner-client", ptproc.Spec{
		Name: "ptcombiner-client", Path: filepath.Join(binDir, "ptcombiner-client"), Args: flags,
		Role: ptproc.Client, Methods: []string{alias}, StateDir: e.dir("client"),
	}))
	if err != nil {
		t.run()
		return fmt.Errorf("ptcombiner-client: %w", err)
	}
	t.add(func() { client.Close() })
	cm, ok := client.Methods()[alias]
	if !ok {
		t.run()
		return fmt.Errorf("ptcombiner-client offered no %s: %v", alias, client.MethodErrors())
	}
	if t.user, t.pass, err = metadata.SOCKS5Credentials(metadata.EncodeClientArgs(sm.Args)); err != nil {
		t.run()
		return err
	}
	t.socks, t.target = cm.Addr.String(), sm.Addr.String()
	t.client, t.server = client.Pid(), server.Pid()
	t.pts = func() []int { return append(procstat.Children(t.client), procstat.Children(t.server)...) }
	return nil
}

// startReference runs the same PT programs as tor would run them, one
// server process per hop (each with its own ORPort) and one client process,
// and wires them with the reference relay.
func (e *env) startReference(pt string, hops int, copyMode string) (*topology, error) {
	return e.startReferenceOf(repeatPT(pt, hops), copyMode)
}

// repeatPT is the chain of n copies of pt.
func repeatPT(pt string, n int) []string {
	hopPTs := make([]string, n)
	for i := range hopPTs {
		hopPTs[i] = pt
	}
	return hopPTs
}

// startReferenceOf is startReference for any chain of one program's PTs,
// innermost first (obfs3|obfs4: obfs4proxy's obfs3 inside its obfs4). As
// tor runs them, one client process offers every method of the chain
// (ClientTransportPlugin obfs3,obfs4 exec obfs4proxy), and each hop has a
// server process of its own for its method.
func (e *env) startReferenceOf(hopPTs []string, copyMode string) (*topology, error) {
	hops, pt := len(hopPTs), hopPTs[0]
	t := &topology{kind: "c", pt: pt, hops: hops}
	if copyMode == "splice" {
		t.kind = "c'"
	}
	prog, _ := e.ptProgram(pt)
	var methods []string
	for i, m := range hopPTs {
		// obfs4proxy's obfs4 client leaves the bytes that came with the
		// server's handshake undecoded until more arrive: an inner
		// protocol whose server speaks first (obfs2, obfs3) stalls.
		t.stalls = t.stalls || m == "obfs4" && slices.ContainsFunc(hopPTs[:i], func(h string) bool { return h == "obfs2" || h == "obfs3" })
		if m != pt {
			t.hopPTs = hopPTs
		}
		if p, _ := e.ptProgram(m); p != prog {
			return nil, fmt.Errorf("reference %s: every hop must be one program's", strings.Join(hopPTs, "|"))
		}
		if !slices.Contains(methods, m) {
			methods = append(methods, m)
		}
	}
	ptCookie := e.dir("ref-cookie")
	rs, err := startHelper("relay-server", ptCookie, e.sinkExt, e.cookie, copyMode)
	if err != nil {
		return nil, err
	}
	t.add(rs.close)
	var ptPids []int
	next := "tor"
	hopArgs := make([]metadata.Args, hops)
	for i := 0; i < hops; i++ {
		pt := hopPTs[i]
		_, opts := e.ptProgram(pt)
		fmt.Fprintf(rs.stdin, "forward %s\n", next)
		orport, err := rs.expect("LISTEN")
		if err != nil {
			t.run()
			return nil, err
		}
		var o map[string]metadata.Args
		if opts != nil {
			o = map[string]metadata.Args{pt: opts}
		}
		p, err := ptproc.Start(context.Background(), ptproc.Spec{
			Name: filepath.Base(prog), Path: prog, Role: ptproc.Server, Methods: []string{pt},
			StateDir: e.dir("ref-server"), Options: o, ORPort: orport, ExtORPort: orport, AuthCookieFile: ptCookie,
			Logger: logger,
		})
		if err != nil {
			t.run()
			return nil, fmt.Errorf("%s server, hop %d: %w", pt, i, err)
		}
		t.add(func() { p.Close() })
		sm, ok := p.ServerMethods()[pt]
		if !ok {
			t.run()
			return nil, fmt.Errorf("%s server offered no %s: %v", prog, pt, p.MethodErrors())
		}
		ptPids = append(ptPids, p.Pid())
		hopArgs[i] = sm.Args
		next = sm.Addr.String()
	}
	t.target = next
	if e.refPublic {
		// Like ptcombiner-server, the relay owns the public listener and
		// joins each client to the outermost PT: one more splice point.
		fmt.Fprintf(rs.stdin, "plain %s\n", next)
		if t.target, err = rs.expect("LISTEN"); err != nil {
			t.run()
			return nil, err
		}
	}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: filepath.Base(prog), Path: prog, Role: ptproc.Client, Methods: methods,
		StateDir: e.dir("ref-client"), Logger: logger,
	})
	if err != nil {
		t.run()
		return nil, fmt.Errorf("%s client: %w", strings.Join(methods, ","), err)
	}
	t.add(func() { p.Close() })
	ptPids = append(ptPids, p.Pid())
	cfg := make([]relayHop, hops)
	for i := range cfg {
		cm, ok := p.Methods()[hopPTs[i]]
		if !ok {
			t.run()
			return nil, fmt.Errorf("%s client offered no %s: %v", prog, hopPTs[i], p.MethodErrors())
		}
		user, pass, err := metadata.SOCKS5Credentials(metadata.EncodeClientArgs(hopArgs[i]))
		if err != nil {
			t.run()
			return nil, err
		}
		cfg[i] = relayHop{SOCKS: cm.Addr.String(), User: user, Pass: pass}
	}
	rc, err := startHelper("relay-client", copyMode)
	if err != nil {
		t.run()
		return nil, err
	}
	t.add(rc.close)
	js, _ := json.Marshal(cfg)
	fmt.Fprintf(rc.stdin, "%s\n", js)
	if t.socks, err = rc.expect("SOCKS"); err != nil {
		t.run()
		return nil, err
	}
	// The application sends the chain's arguments as tor would, so that
	// both sides of the comparison pay for the same SOCKS exchange.
	if t.user, t.pass, err = metadata.SOCKS5Credentials(metadata.EncodeClientArgs(metadata.JoinHops(hopArgs))); err != nil {
		t.run()
		return nil, err
	}
	t.client, t.server = rc.pid(), rs.pid()
	t.pts = func() []int { return ptPids }
	t.splicesClient, t.splicesServer = hops, hops
	if e.refPublic {
		t.splicesServer++
	}
	return t, nil
}
