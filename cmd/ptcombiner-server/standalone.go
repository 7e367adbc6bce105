package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/free"
	"github.com/ptcombiner/ptcombiner/internal/runner"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// runStandalone runs the server without tor: each --listen chain's streams
// go to the plain TCP service --forward, or, with --free, each carries a
// session of streams to any destination the policy allows, so that chains
// can protect more than Tor. It prints, per chain, what a client needs.
func runStandalone(c *cli.Context) error {
	var binds []chain.Bind
	for _, l := range c.StringSlice("listen") {
		alias, addr, ok := strings.Cut(l, "=")
		if !ok || alias == "" || addr == "" {
			return fmt.Errorf("--listen %q: want ALIAS=ADDR, as in obfs3_obfs4=0.0.0.0:443", l)
		}
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			return fmt.Errorf("--listen %s: %w", alias, err)
		}
		binds = append(binds, chain.Bind{Alias: alias, Addr: a})
	}
	if len(binds) == 0 {
		return errors.New("not run by tor (TOR_PT_MANAGED_TRANSPORT_VER is not set) and no --listen given: nothing to do (see docs/bridge.md)")
	}
	forward := c.String("forward")
	tors, err := torInstances(c.StringSlice("tor-extorport"))
	if err != nil {
		return err
	}
	destinations := 0
	for _, set := range []bool{forward != "", c.Bool("free"), len(tors) > 0} {
		if set {
			destinations++
		}
	}
	switch {
	case destinations > 1:
		return errors.New("--forward, --free and --tor-extorport: choose one (where finished streams go)")
	case destinations == 0:
		return errors.New("--forward HOST:PORT is required without tor: where finished streams go (or --free, see docs/free.md, or --tor-extorport ADDR=COOKIEFILE, once per tor instance)")
	case !c.Bool("free") && (len(c.StringSlice("allow")) > 0 || len(c.StringSlice("deny")) > 0):
		return errors.New("--allow and --deny need --free")
	case !c.Bool("free") && c.IsSet("stream-window"):
		return errors.New("--stream-window needs --free")
	case !c.Bool("free") && c.IsSet("session-window"):
		return errors.New("--session-window needs --free")
	}
	if err := free.CheckStreamWindow(c.Int("stream-window") << 10); err != nil {
		return fmt.Errorf("--stream-window: %w", err)
	}
	if err := free.CheckSessionWindow(c.Int("session-window") << 10); err != nil {
		return fmt.Errorf("--session-window: %w", err)
	}
	policy, err := free.ParseRules(c.StringSlice("allow"), c.StringSlice("deny"))
	if err != nil {
		return err
	}
	stateDir := c.String("state-dir")
	if stateDir == "" {
		return errors.New("--state-dir DIR is required without tor: the hops keep their keys there (obfs4's cert), in-process (--builtin) or in PT programs")
	}
	// PT 1.0 gives a PT an absolute TOR_PT_STATE_LOCATION; a relative
	// --state-dir is the user's working directory's.
	if stateDir, err = filepath.Abs(stateDir); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	log, closer, err := runner.Logger(c, false)
	if err != nil {
		return err
	}
	defer closer.Close()
	cfg, err := runner.LoadConfig(c, chain.ServerRole)
	if err != nil {
		return err
	}
	m, err := runner.StartMetrics(c, log, "server", false)
	if err != nil {
		return err
	}
	defer m.Close()
	monitor := runner.NewMonitor(context.Background(), false)
	defer monitor.Stop()
	var streams func(ctx context.Context, conn net.Conn, alias, client string)
	if c.Bool("free") {
		fs := &free.Server{Policy: policy, Logger: log, DialTimeout: c.Duration("dial-timeout"),
			UDPIdle: c.Duration("udp-idle"), ShowNames: c.Bool("unsafe-logging"), StreamWindow: c.Int("stream-window") << 10,
			SessionWindow: c.Int("session-window") << 10}
		streams = func(ctx context.Context, conn net.Conn, alias, _ string) { fs.ServeConn(ctx, conn, alias) }
	}
	server := chain.NewServer(chain.ServerOptions{
		Streams:            streams,
		Config:             cfg,
		StateDir:           stateDir,
		Logger:             log,
		TorORPort:          forward,
		TorInstances:       tors,
		ProxyHeaderTimeout: c.Duration("proxy-header-timeout"),
		HandshakeTimeout:   c.Duration("handshake-timeout"),
		DialTimeout:        c.Duration("dial-timeout"),
		StartTimeout:       c.Duration("start-timeout"),
		MaxConns:           c.Int("max-conns"),
		Observer:           m.Observer(),
	})
	defer server.Close()
	for _, ti := range tors {
		if err := chain.CheckTorCookie(ti.CookiePath); err != nil {
			// Tor may start after us; each connection reads it again.
			log.Warn("a tor instance's cookie file cannot be read yet", "extorport", ti.ExtORPort, "err", err)
		}
	}
	startCtx, cancelStart := monitor.ExitContext()
	published, err := server.Start(startCtx, binds)
	cancelStart()
	if err != nil {
		return err
	}
	var errs []error
	var public []*net.TCPAddr
	for _, p := range published {
		if p.Err != nil {
			errs = append(errs, fmt.Errorf("chain %s: %w", p.Alias, p.Err))
			continue
		}
		public = append(public, p.Addr)
		fmt.Printf("CHAIN %s %s ARGS %s\n", p.Alias, p.Addr, metadata.EncodeClientArgs(p.Args))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var aliases []string
	for _, b := range binds {
		aliases = append(aliases, b.Alias)
	}
	m.Serving(aliases)
	select {
	case <-monitor.Exit():
	case <-monitor.Drain():
		server.CloseListeners(public)
		select {
		case <-server.Drained():
		case <-monitor.Exit():
		}
	}
	log.Info("exiting", "reason", monitor.Why())
	return server.Close()
}

// torInstances reads --tor-extorport ADDR=COOKIEFILE values.
func torInstances(flags []string) ([]chain.TorInstance, error) {
	var out []chain.TorInstance
	for _, f := range flags {
		addr, cookie, ok := strings.Cut(f, "=")
		if !ok || cookie == "" {
			return nil, fmt.Errorf("--tor-extorport %q: want ADDR=COOKIEFILE, as in 127.0.0.1:7001=/var/lib/tor-instances/a/extended_orport_auth_cookie", f)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--tor-extorport %q: %w", f, err)
		}
		out = append(out, chain.TorInstance{ExtORPort: addr, CookiePath: cookie})
	}
	return out, nil
}
