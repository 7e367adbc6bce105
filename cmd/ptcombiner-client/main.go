// Command ptcombiner-client chains pluggable transports on the client side.
//
// Tor runs it as a ClientTransportPlugin:
//
//	ClientTransportPlugin obfs3_obfs4 exec /usr/bin/ptcombiner-client --plugin obfs3,obfs4=/usr/bin/obfs4proxy --chain obfs3_obfs4=obfs3|obfs4
//	Bridge obfs3_obfs4 192.0.2.1:443 <FINGERPRINT> 1.cert=... 1.iat-mode=0
//
// For each chain tor asks for it offers a SOCKS5 listener (CMETHOD); each
// SOCKS request is carried through the chain's PT programs, started once
// each, to the bridge. See docs/client.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"
	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/internal/runner"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
)

func main() {
	app := &cli.App{
		Name:    "ptcombiner-client",
		Usage:   "chain Tor pluggable transports (run by tor as a ClientTransportPlugin)",
		Version: runner.Version,
		Flags: append(runner.Flags(),
			&cli.DurationFlag{Name: "socks-timeout", Value: 10 * time.Second, Usage: "bound on reading an application's SOCKS request"},
			&cli.DurationFlag{Name: "setup-timeout", Value: chain.DefaultSetupTimeout, Usage: "bound on setting up a chained connection (all hops)"},
			&cli.DurationFlag{Name: "start-timeout", Value: chain.DefaultStartTimeout, Usage: "bound on a PT program's start, up to CMETHODS DONE"},
			&cli.StringSliceFlag{Name: "indirect", Usage: "methods whose PT does not connect to the address it is given, as meek_lite, snowflake and webtunnel do: `METHODS`, comma separated; they can only be last in a chain (repeatable)"},
			&cli.IntFlag{Name: "max-conns", Value: 0, Usage: "cap on application connections open at once (0: none); further ones are closed at once"},
			&cli.StringSliceFlag{Name: "listen", Category: "Standalone (without tor)", Usage: "a SOCKS5 listener for a chain: `ALIAS=ADDR`; the application gives the bridge and its arguments as tor does (repeatable)"},
			&cli.StringSliceFlag{Name: "tunnel", Category: "Standalone (without tor)", Usage: "a plain TCP listener whose connections go through a chain to a bridge: `ADDR=ALIAS@BRIDGE` (repeatable)"},
			&cli.StringSliceFlag{Name: "args", Category: "Standalone (without tor)", Usage: "a tunnel's per-hop arguments: `ALIAS=K=V;K=V`, e.g. obfs3_obfs4='1.cert=...;1.iat-mode=0'"},
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
	log, closer, cfg, err := runner.ManagedSetup(c, chain.ClientRole, "ptcombiner-client")
	if err != nil {
		return err
	}
	defer closer.Close()
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

	life, endLife := context.WithCancel(context.Background())
	defer endLife()
	srv := &server{ctx: life, client: client, log: log, socksTimeout: c.Duration("socks-timeout"), maxConns: int64(c.Int("max-conns"))}
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
		srv.serve(name, ln)
		pt.Cmethod(name, "socks5", ln.Addr())
	}
	pt.CmethodsDone()

	select {
	case <-monitor.Exit():
	case <-monitor.Drain():
		log.Info("draining", "reason", monitor.Why())
		srv.closeListeners()
		done := make(chan struct{})
		go func() { srv.wait(); close(done) }()
		select {
		case <-done:
		case <-monitor.Exit():
		}
	}
	log.Info("exiting", "reason", monitor.Why())
	srv.closeListeners()
	endLife()
	client.Close() // ends every connection and child
	srv.wait()
	return nil
}

// server accepts SOCKS connections for the chains and carries each through
// its chain.
type server struct {
	ctx          context.Context // cancelled when the program ends
	client       *chain.Client
	log          *slog.Logger
	socksTimeout time.Duration
	maxConns     int64 // 0: no cap

	open    atomic.Int64
	capWarn atomic.Bool

	mu        sync.Mutex
	listeners []*net.TCPListener
	conns     sync.WaitGroup
}

// serve accepts SOCKS connections for alias on ln.
func (s *server) serve(alias string, ln *net.TCPListener) {
	s.acceptLoop(ln, "chain "+alias, func(conn *net.TCPConn) { s.handle(alias, conn) })
}

// acceptLoop runs handle for every connection on ln, each in its own
// goroutine, until ln is closed.
func (s *server) acceptLoop(ln *net.TCPListener, what string, handle func(*net.TCPConn)) {
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	s.mu.Unlock()
	s.conns.Add(1)
	go func() {
		defer s.conns.Done()
		for {
			conn, err := ln.AcceptTCP()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				s.log.Warn("accept", "listener", what, "err", err)
				time.Sleep(50 * time.Millisecond) // e.g. EMFILE: do not spin
				continue
			}
			s.conns.Add(1)
			go func() {
				defer s.conns.Done()
				handle(conn)
			}()
		}
	}()
}

func (s *server) handle(alias string, conn *net.TCPConn) {
	defer conn.Close()
	if s.maxConns > 0 {
		if n := s.open.Add(1); n > s.maxConns {
			s.open.Add(-1)
			if s.capWarn.CompareAndSwap(false, true) {
				s.log.Warn("connection cap reached: closing new connections", "max_conns", s.maxConns)
			}
			return
		}
		defer s.open.Add(-1)
	}
	stop := context.AfterFunc(s.ctx, func() { conn.Close() }) // ends a pending handshake at exit
	defer stop()
	req, err := shim.ReadRequest(conn, s.socksTimeout)
	if err != nil {
		s.log.Info("bad SOCKS request", "chain", alias, "err", err)
		return
	}
	ctx := s.ctx
	cc, err := s.client.Dial(ctx, alias, req.Target, req.Args)
	if err != nil {
		code := shim.ReplyCodeFor(err)
		var he *chain.HopError
		if errors.As(err, &he) {
			code = he.ReplyCode()
		}
		s.log.Warn("chained connection failed", "err", err, "socks_reply", code)
		shim.Reject(conn, code)
		return
	}
	defer cc.Close()
	if err := shim.Grant(conn); err != nil {
		return
	}
	if _, _, err := shim.Pipe(ctx, conn, cc.TCPConn); err != nil {
		s.log.Debug("connection ended", "chain", alias, "err", err)
	}
}

func (s *server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.listeners {
		ln.Close()
	}
}

func (s *server) wait() { s.conns.Wait() }
