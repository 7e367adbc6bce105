package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/internal/runner"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// runStandalone runs the server without tor: each --listen chain's streams
// go to the plain TCP service --forward, so that chains can protect more
// than Tor. It prints, per chain, what a client needs.
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
	if forward == "" {
		return errors.New("--forward HOST:PORT is required without tor: where finished streams go")
	}
	stateDir := c.String("state-dir")
	if stateDir == "" {
		return errors.New("--state-dir DIR is required without tor: the hops keep their keys there (obfs4's cert), in-process (--builtin) or in PT programs")
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
	server := chain.NewServer(chain.ServerOptions{
		Config:           cfg,
		StateDir:         stateDir,
		Logger:           log,
		TorORPort:        forward,
		HandshakeTimeout: c.Duration("handshake-timeout"),
		DialTimeout:      c.Duration("dial-timeout"),
		StartTimeout:     c.Duration("start-timeout"),
		MaxConns:         c.Int("max-conns"),
		Observer:         m.Observer(),
	})
	defer server.Close()
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
