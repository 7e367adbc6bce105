// Command ptcombiner-client chains pluggable transports on the client side.
//
// Tor runs it as a ClientTransportPlugin:
//
//	ClientTransportPlugin obfs3_obfs4 exec /usr/bin/ptcombiner-client --plugin obfs3,obfs4=/usr/bin/obfs4proxy --chain obfs3_obfs4=obfs3|obfs4
//	Bridge obfs3_obfs4 192.0.2.1:443 <FINGERPRINT> 1.cert=... 1.iat-mode=0
//
// For each chain tor asks for it offers a SOCKS5 listener (CMETHOD); each
// SOCKS request is carried through the chain's hops (PT programs started
// once each, in-process transports, unmanaged PTs) to the bridge. The
// engine and the SOCKS listener are package chain's; this program holds
// the flags and tor's protocol. See docs/client.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/free"
	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/internal/runner"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

func main() {
	app := &cli.App{
		Name:        "ptcombiner-client",
		Usage:       "chain Tor pluggable transports (run by tor as a ClientTransportPlugin)",
		UsageText:   "ptcombiner-client [OPTIONS]",
		Description: description,
		Version:     runner.Version,
		Flags: append(runner.Flags(),
			&cli.DurationFlag{Name: "socks-timeout", Value: 10 * time.Second, Usage: "bound on reading an application's SOCKS request"},
			&cli.DurationFlag{Name: "setup-timeout", Value: chain.DefaultSetupTimeout, Usage: "bound on setting up a chained connection (all hops)"},
			&cli.DurationFlag{Name: "start-timeout", Value: chain.DefaultStartTimeout, Usage: "bound on a PT program's start, up to CMETHODS DONE"},
			&cli.StringSliceFlag{Name: "indirect", Usage: "methods whose PT does not connect to the address it is given, as meek_lite, snowflake and webtunnel do: `METHODS`, comma separated; they can only be last in a chain (repeatable)"},
			&cli.IntFlag{Name: "max-conns", Value: 0, Usage: "cap on application connections open at once (0: none); further ones are closed at once"},
			&cli.StringSliceFlag{Name: "listen", Category: "Standalone (without tor)", Usage: "a SOCKS5 listener for a chain: `ALIAS=ADDR`; the application gives the bridge and its arguments as tor does (repeatable)"},
			&cli.StringSliceFlag{Name: "tunnel", Category: "Standalone (without tor)", Usage: "a plain TCP listener whose connections go through a chain to a bridge: `ADDR=ALIAS@BRIDGE` (repeatable)"},
			&cli.StringSliceFlag{Name: "proxy", Category: "Standalone (without tor)", Usage: "a SOCKS5 proxy for any destination (CONNECT and UDP ASSOCIATE) whose streams all go through one chained connection to a bridge run with --free: `ADDR=ALIAS@BRIDGE` (repeatable; see docs/free.md)"},
			&cli.StringFlag{Name: "proxy-auth", Category: "Standalone (without tor)", Usage: "require RFC 1929 username/password on every --proxy, from `FILE` (USER:PASSWORD lines)"},
			&cli.BoolFlag{Name: "proxy-wait", Category: "Standalone (without tor)", Usage: "every --proxy CONNECT waits for the bridge's reply, so that the application gets the bridge's exact SOCKS reply code (by default one to an IP address the bridge's advertised policy allows is granted at once, and a failure to reach it resets the connection)"},
			&cli.IntFlag{Name: "stream-window", Category: "Standalone (without tor)", Value: free.DefaultStreamWindow >> 10, Usage: "with --proxy, each stream's receive window in KiB: what the other end may send ahead on one stream. A stream carries at most about this per round trip of the link (2048 KiB over 100 ms: 10 to 20 MB/s); larger lifts that, but a new stream waits behind every window in flight, so on a slow link take about 3 to 4 times its rate times its round trip (512 KiB for 20 Mbit/s over 60 ms; see docs/free.md, \"Behind bulk\")"},
			&cli.IntFlag{Name: "session-window", Category: "Standalone (without tor)", Value: 0, Usage: "with --proxy, what the bridge may keep in flight over the whole session, all streams together, in KiB (0: half --stream-window; -1: none). A new stream waits behind what is in flight, and eight bulk streams with no session window keep eight stream windows there; see docs/free.md, \"Session window\""},
			&cli.DurationFlag{Name: "session-wait", Category: "Standalone (without tor)", Value: free.DefaultSessionWait, Usage: "bound on a --proxy stream's wait for a session to the bridge"},
			&cli.StringSliceFlag{Name: "args", Category: "Standalone (without tor)", Usage: "a tunnel's or proxy's per-hop arguments: `ALIAS=K=V;K=V`, e.g. obfs3_obfs4='1.cert=...;1.iat-mode=0'"},
			&cli.StringFlag{Name: "state-dir", Category: "Standalone (without tor)", Usage: "`DIR` for the PT programs' state (default: a temporary directory)"},
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
	if len(c.StringSlice("proxy")) > 0 {
		return runner.Fail("", "ptcombiner-client: --proxy runs without tor only (see docs/free.md)")
	}
	log, closer, cfg, err := runner.ManagedSetup(c, chain.ClientRole, "ptcombiner-client")
	if err != nil {
		return err
	}
	defer closer.Close()
	m, err := runner.StartMetrics(c, log, "client", true)
	if err != nil { // before VERSION: tor takes ENV-ERROR only then
		return runner.Fail("ENV-ERROR", "ptcombiner-client: "+err.Error())
	}
	defer m.Close()
	info, err := pt.ClientSetup(nil) // VERSION, or VERSION-ERROR / ENV-ERROR
	if err != nil {
		return runner.Fail("", "ptcombiner-client: "+err.Error())
	}
	stateDir, err := runner.ManagedStateDir()
	if err != nil {
		return err
	}
	// pt-spec 3.2.2: unknown names are ignored, without a CMETHOD-ERROR;
	// the log says which.
	names, ignored := cfg.Requested(info.MethodNames)
	log.Info("transports tor asked for", "asked", info.MethodNames, "serving", names, "ignored", ignored)
	proxyURL := ""
	if info.ProxyURL != nil {
		proxyURL = info.ProxyURL.String()
	}

	monitor := runner.NewMonitor(context.Background(), runner.WatchStdin())
	defer monitor.Stop()

	client := chain.NewClient(chain.ClientOptions{
		Config:       cfg,
		StateDir:     stateDir,
		ProxyURL:     proxyURL,
		Logger:       log,
		SetupTimeout: c.Duration("setup-timeout"),
		StartTimeout: c.Duration("start-timeout"),
		OnChildLog:   runner.RelayChildLog,
		OnEvent:      func(e chain.Event) { runner.ReportEvent(cfg, names, e) },
		Observer:     m.Observer(),
	})
	defer client.Close()

	startCtx, cancelStart := monitor.ExitContext()
	results := client.Start(startCtx, names)
	cancelStart()
	if proxyURL != "" {
		ok := false
		for _, name := range names {
			ok = ok || results[name] == nil
		}
		if !ok {
			pt.ProxyError("no chain could start with the proxy " + proxyURL)
			return runner.Fail("", "ptcombiner-client: no chain could start with the proxy")
		}
		pt.ProxyDone()
	}

	srv := &chain.SOCKSServer{Client: client, Logger: log,
		RequestTimeout: c.Duration("socks-timeout"), MaxConns: c.Int("max-conns")}
	var serving sync.WaitGroup
	for _, name := range names {
		if err := results[name]; err != nil {
			log.Warn("chain cannot start", "chain", name, "err", err)
			pt.CmethodError(name, ptproc.Sanitize(err.Error()))
			continue
		}
		ln, err := loopback.ListenTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			pt.CmethodError(name, ptproc.Sanitize("cannot listen: "+err.Error()))
			continue
		}
		serving.Go(func() { srv.Serve(ln, name) })
		pt.Cmethod(name, "socks5", ln.Addr())
	}
	pt.CmethodsDone()
	m.Serving(names)
	serveUntilEnd(monitor, log, srv, client)
	serving.Wait()
	return nil
}

// serveUntilEnd lets srv carry connections until the monitor says to end:
// at once on exit; on a drain (the first SIGINT) once the open connections
// have ended, or at exit. Then it ends every connection, the sessions
// (closing each of keepers) and every child.
func serveUntilEnd(monitor *runner.Monitor, log *slog.Logger, srv *chain.SOCKSServer, client *chain.Client, keepers ...*free.Keeper) {
	select {
	case <-monitor.Exit():
	case <-monitor.Drain():
		log.Info("draining", "reason", monitor.Why())
		exit, cancel := monitor.ExitContext()
		srv.Shutdown(exit)
		cancel()
	}
	log.Info("exiting", "reason", monitor.Why())
	srv.Close()
	for _, k := range keepers {
		k.Close()
	}
	client.Close() // ends every connection and child
}
