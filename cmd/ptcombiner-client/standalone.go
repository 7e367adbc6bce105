package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/internal/runner"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// tunnel is a plain TCP listener whose connections go through a chain to a
// fixed bridge with fixed arguments.
type tunnel struct {
	listen, alias, bridge string
	args                  metadata.Args
}

// runStandalone runs the client without tor: SOCKS5 listeners (--listen)
// and plain TCP tunnels (--tunnel), until SIGTERM or SIGINT.
func runStandalone(c *cli.Context) error {
	listens := map[string]string{}
	var order []string
	for _, l := range c.StringSlice("listen") {
		alias, addr, ok := strings.Cut(l, "=")
		if !ok || alias == "" || addr == "" {
			return fmt.Errorf("--listen %q: want ALIAS=ADDR, as in obfs3_obfs4=127.0.0.1:1080", l)
		}
		listens[alias] = addr
		order = append(order, alias)
	}
	tunnelArgs := map[string]metadata.Args{}
	for _, a := range c.StringSlice("args") {
		alias, enc, ok := strings.Cut(a, "=")
		if !ok || alias == "" {
			return fmt.Errorf("--args %q: want ALIAS=K=V;K=V", a)
		}
		args, err := metadata.ParseClientArgs(enc)
		if err != nil {
			return fmt.Errorf("--args %s: %w", alias, err)
		}
		tunnelArgs[alias] = args
	}
	var tunnels []tunnel
	for _, t := range c.StringSlice("tunnel") {
		addr, rest, ok1 := strings.Cut(t, "=")
		alias, bridge, ok2 := strings.Cut(rest, "@")
		if !ok1 || !ok2 || addr == "" || alias == "" || bridge == "" {
			return fmt.Errorf("--tunnel %q: want ADDR=ALIAS@BRIDGE, as in 127.0.0.1:2222=obfs3_obfs4@203.0.113.5:443", t)
		}
		tunnels = append(tunnels, tunnel{addr, alias, bridge, tunnelArgs[alias]})
		order = append(order, alias)
	}
	if len(order) == 0 {
		return errors.New("not run by tor (TOR_PT_MANAGED_TRANSPORT_VER is not set) and no --listen or --tunnel given: nothing to do (see docs/client.md)")
	}
	log, closer, err := runner.Logger(c, false)
	if err != nil {
		return err
	}
	defer closer.Close()
	cfg, err := runner.LoadConfig(c, chain.ClientRole)
	if err != nil {
		return err
	}
	stateDir := c.String("state-dir")
	if stateDir == "" {
		if stateDir, err = os.MkdirTemp("", "ptcombiner-client-"); err != nil {
			return err
		}
		defer os.RemoveAll(stateDir)
	}
	m, err := runner.StartMetrics(c, log, "client", false)
	if err != nil {
		return err
	}
	defer m.Close()
	monitor := runner.NewMonitor(context.Background(), false)
	defer monitor.Stop()
	client := chain.NewClient(chain.ClientOptions{
		Config:       cfg,
		StateDir:     stateDir,
		Logger:       log,
		SetupTimeout: c.Duration("setup-timeout"),
		StartTimeout: c.Duration("start-timeout"),
		Observer:     m.Observer(),
	})
	defer client.Close()
	var errs []error
	startCtx, cancelStart := monitor.ExitContext()
	started := client.Start(startCtx, order)
	cancelStart()
	for name, err := range started {
		if err != nil {
			errs = append(errs, fmt.Errorf("chain %s: %w", name, err))
		}
	}
	for _, name := range order {
		if _, ok := cfg.Lookup(name); !ok {
			errs = append(errs, fmt.Errorf("chain %s: no such alias or method", name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	srv := &chain.SOCKSServer{Client: client, Logger: log,
		RequestTimeout: c.Duration("socks-timeout"), MaxConns: c.Int("max-conns")}
	var serving sync.WaitGroup
	defer serving.Wait()
	for alias, addr := range listens {
		ln, err := listenTCP(addr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("--listen %s: %w", alias, err)
		}
		serving.Go(func() { srv.Serve(ln, alias) })
		fmt.Printf("SOCKS5 %s %s\n", alias, ln.Addr())
	}
	for _, t := range tunnels {
		ln, err := listenTCP(t.listen)
		if err != nil {
			srv.Close()
			return fmt.Errorf("--tunnel %s: %w", t.listen, err)
		}
		serving.Go(func() { srv.ServeTunnel(ln, t.alias, t.bridge, t.args) })
		fmt.Printf("TUNNEL %s %s -> %s\n", t.alias, ln.Addr(), t.bridge)
	}
	m.Serving(order)
	serveUntilEnd(monitor, log, srv, client)
	return nil
}

func listenTCP(addr string) (*net.TCPListener, error) {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	return loopback.ListenTCP(a)
}
