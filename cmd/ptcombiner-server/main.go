// Command ptcombiner-server chains pluggable transports on a bridge.
//
// Tor runs it as a ServerTransportPlugin:
//
//	ServerTransportPlugin obfs3_obfs4 exec /usr/local/bin/ptcombiner-server --plugin obfs3,obfs4=/usr/bin/obfs4proxy --chain obfs3_obfs4=obfs3|obfs4
//	ServerTransportListenAddr obfs3_obfs4 0.0.0.0:443
//	ExtORPort auto
//
// It listens for each chain where tor says, runs the server side of each
// hop's PT, and hands every finished stream to tor's Extended ORPort with the
// real client's address, matched exactly, never by arrival order. See
// docs/bridge.md.
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/urfave/cli/v2"
	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/free"
	"github.com/ptcombiner/ptcombiner/internal/runner"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

func main() {
	app := &cli.App{
		Name:        "ptcombiner-server",
		Usage:       "chain Tor pluggable transports on a bridge (run by tor as a ServerTransportPlugin)",
		UsageText:   "ptcombiner-server [OPTIONS]",
		Description: description,
		Version:     runner.Version,
		Flags: append(runner.Flags(),
			&cli.DurationFlag{Name: "handshake-timeout", Value: chain.DefaultHandshakeTimeout, Usage: "bound on each Extended ORPort handshake"},
			&cli.DurationFlag{Name: "dial-timeout", Value: chain.DefaultDialTimeout, Usage: "bound on each dial into a hop or to tor"},
			&cli.DurationFlag{Name: "start-timeout", Value: chain.DefaultStartTimeout, Usage: "bound on a PT program's start, up to SMETHODS DONE"},
			&cli.IntFlag{Name: "max-conns", Value: 0, Usage: "cap on client connections open at once (0: none); further ones are closed at once"},
			&cli.StringSliceFlag{Name: "indirect", Usage: "methods whose PT is indirect besides meek, snowflake and webtunnel: `METHODS`, comma separated; as a chain's outermost hop (the only place it may be) its server listens on the chain's public address itself (repeatable)"},
			&cli.StringSliceFlag{Name: "outer-listens", Usage: "chains whose outermost hop, a direct PT program, listens on the chain's public address itself, with no listener of ptcombiner's in front: `ALIASES`, comma separated (repeatable)"},
			&cli.StringSliceFlag{Name: "proxy-protocol", Usage: "sources trusted to send a PROXY protocol header (v1 or v2: HAProxy's send-proxy, send-proxy-v2), whose client address then goes to tor: `CIDRS`, comma separated, e.g. 127.0.0.1,10.0.0.0/8; they must send one, and any other source that sends one is refused (repeatable)"},
			&cli.DurationFlag{Name: "proxy-header-timeout", Value: chain.DefaultProxyHeaderTimeout, Usage: "bound on the read of a PROXY protocol header"},
			&cli.StringSliceFlag{Name: "tor-extorport", Category: "Standalone (without tor)", Usage: "a tor instance's Extended ORPort and the cookie file it writes: `ADDR=COOKIEFILE`; repeated, one per tor instance of one bridge, client connections are spread over them (fewest open first; one that fails is skipped and retried with backoff)"},
			&cli.StringSliceFlag{Name: "listen", Category: "Standalone (without tor)", Usage: "a chain's public listener: `ALIAS=ADDR` (repeatable)"},
			&cli.StringFlag{Name: "forward", Category: "Standalone (without tor)", Usage: "the TCP service `HOST:PORT` that finished streams go to"},
			&cli.BoolFlag{Name: "free", Category: "Standalone (without tor)", Usage: "instead of --forward: every chained connection carries a session of streams to any destination, from a client's --proxy (see docs/free.md)"},
			&cli.StringSliceFlag{Name: "allow", Category: "Standalone (without tor)", Usage: "with --free, destinations to allow: `PREFIX[:PORTS]`, e.g. 127.0.0.0/8, 192.0.2.0/24:80,443, [2001:db8::/32]:443, :443 (repeatable); loopback, private, link-local and multicast are denied unless allowed"},
			&cli.StringSliceFlag{Name: "deny", Category: "Standalone (without tor)", Usage: "with --free, destinations to deny: `PREFIX[:PORTS]` (repeatable); the narrowest matching rule decides"},
			&cli.IntFlag{Name: "stream-window", Category: "Standalone (without tor)", Value: free.DefaultStreamWindow >> 10, Usage: "with --free, each stream's receive window in KiB: what the other end may send ahead on one stream. A stream carries at most about this per round trip of the link (2048 KiB over 100 ms: 10 to 20 MB/s); larger lifts that, but a new stream waits behind every window in flight, so on a slow link take about 3 to 4 times its rate times its round trip (512 KiB for 20 Mbit/s over 60 ms; see docs/free.md, \"Behind bulk\")"},
			&cli.IntFlag{Name: "session-window", Category: "Standalone (without tor)", Value: 0, Usage: "with --free, what a client may keep in flight over the whole session, all streams together, in KiB (0: half --stream-window; -1: none). A new stream waits behind what is in flight, and eight bulk streams with no session window keep eight stream windows there; see docs/free.md, \"Session window\""},
			&cli.DurationFlag{Name: "udp-idle", Category: "Standalone (without tor)", Value: free.DefaultUDPIdle, Usage: "with --free, end a UDP association after this long without a datagram"},
			&cli.StringFlag{Name: "state-dir", Category: "Standalone (without tor)", Usage: "`DIR` for the hops' state, in-process or in PT programs (obfs4's keys: keep it)"},
		),
		HideHelpCommand: true,
		// --plugin obfs3,obfs4=PATH: a comma is part of the value.
		DisableSliceFlagSeparator: true,
		Action:                    run,
	}
	os.Exit(runner.Run(app, os.Args)) // help and errors never on tor's stdout
}

func run(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (chains go in --chain ALIAS=CHAIN)", c.Args().Slice())
	}
	if !runner.Managed() {
		return runStandalone(c)
	}
	if len(c.StringSlice("tor-extorport")) > 0 {
		return runner.Fail("ENV-ERROR", "ptcombiner-server: --tor-extorport is for a server run without tor (by systemd): run by tor, it uses tor's Extended ORPort")
	}
	if c.Bool("free") {
		return runner.Fail("", "ptcombiner-server: --free runs without tor only (see docs/free.md)")
	}
	log, closer, cfg, err := runner.ManagedSetup(c, chain.ServerRole, "ptcombiner-server")
	if err != nil {
		return err
	}
	defer closer.Close()
	m, err := runner.StartMetrics(c, log, "server", true)
	if err != nil { // before VERSION: tor takes ENV-ERROR only then
		return runner.Fail("ENV-ERROR", "ptcombiner-server: "+err.Error())
	}
	defer m.Close()
	// Options are read by goptlib too, but its parser is not exported; read
	// them ourselves first so that a malformed value gets a precise message.
	if _, err := metadata.ParseServerTransportOptions(os.Getenv("TOR_PT_SERVER_TRANSPORT_OPTIONS")); err != nil {
		return runner.Fail("ENV-ERROR", "TOR_PT_SERVER_TRANSPORT_OPTIONS: "+err.Error())
	}
	info, err := pt.ServerSetup(nil) // VERSION, or VERSION-ERROR / ENV-ERROR
	if err != nil {
		return runner.Fail("", "ptcombiner-server: "+err.Error())
	}
	if info.ExtendedOrAddr != nil {
		// Every chain hands its streams to tor's Extended ORPort, so a
		// cookie file that cannot be used fails them all: an ENV-ERROR now
		// rather than a failure at each client's connection. Tor writes the
		// file before it starts its PTs (init_ext_or_cookie_authentication).
		if err := chain.CheckTorCookie(info.AuthCookiePath); err != nil {
			return runner.Fail("ENV-ERROR", err.Error())
		}
	}
	own, err := runner.ManagedStateDir()
	if err != nil {
		return err
	}

	monitor := runner.NewMonitor(context.Background(), runner.WatchStdin())
	defer monitor.Stop()

	var aliases []string
	for _, b := range info.Bindaddrs {
		aliases = append(aliases, b.MethodName)
	}
	opt := chain.ServerOptions{
		Config:             cfg,
		StateDir:           own,
		Logger:             log,
		HandshakeTimeout:   c.Duration("handshake-timeout"),
		DialTimeout:        c.Duration("dial-timeout"),
		StartTimeout:       c.Duration("start-timeout"),
		MaxConns:           c.Int("max-conns"),
		ProxyHeaderTimeout: c.Duration("proxy-header-timeout"),
		OnChildLog:         runner.RelayChildLog,
		OnEvent:            func(e chain.Event) { runner.ReportEvent(cfg, aliases, e) },
		Observer:           m.Observer(),
	}
	if info.ExtendedOrAddr != nil {
		opt.TorExtORPort = info.ExtendedOrAddr.String()
		opt.TorCookiePath = info.AuthCookiePath
	} else {
		log.Warn("tor gave no Extended ORPort: clients' addresses cannot reach tor (set ExtORPort auto in the torrc)")
	}
	if info.OrAddr != nil {
		opt.TorORPort = info.OrAddr.String()
	}
	server := chain.NewServer(opt)
	defer server.Close()

	var binds []chain.Bind
	for _, b := range info.Bindaddrs {
		binds = append(binds, chain.Bind{Alias: b.MethodName, Addr: b.Addr, Options: b.Options})
	}
	startCtx, cancelStart := monitor.ExitContext()
	published, err := server.Start(startCtx, binds)
	cancelStart()
	if err != nil {
		return runner.Fail("ENV-ERROR", "ptcombiner-server: "+err.Error())
	}
	var public []*net.TCPAddr
	for _, p := range published {
		if p.Err != nil {
			log.Warn("chain cannot start", "chain", p.Alias, "err", p.Err)
			pt.SmethodError(p.Alias, ptproc.Sanitize(p.Err.Error()))
			continue
		}
		public = append(public, p.Addr)
		if len(p.Args) == 0 {
			pt.Smethod(p.Alias, p.Addr)
		} else {
			pt.SmethodArgs(p.Alias, p.Addr, p.Args)
		}
	}
	pt.SmethodsDone()
	m.Serving(aliases)

	select {
	case <-monitor.Exit():
	case <-monitor.Drain():
		log.Info("draining", "reason", monitor.Why())
		server.CloseListeners(public)
		select {
		case <-server.Drained():
		case <-monitor.Exit():
		}
	}
	log.Info("exiting", "reason", monitor.Why())
	return server.Close()
}
