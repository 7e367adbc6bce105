package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/free"
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

// runStandalone runs the client without tor: SOCKS5 listeners (--listen),
// plain TCP tunnels (--tunnel) and free SOCKS5 proxies (--proxy), until
// SIGTERM or SIGINT.
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
	tunnels, err := parseTunnels(c, "tunnel", tunnelArgs)
	if err != nil {
		return err
	}
	proxies, err := parseTunnels(c, "proxy", tunnelArgs)
	if err != nil {
		return err
	}
	for _, t := range append(tunnels, proxies...) {
		order = append(order, t.alias)
	}
	if len(order) == 0 {
		return errors.New("not run by tor (TOR_PT_MANAGED_TRANSPORT_VER is not set) and no --listen or --tunnel given, nor --proxy: nothing to do (see docs/client.md)")
	}
	if c.String("proxy-auth") != "" && len(proxies) == 0 {
		return errors.New("--proxy-auth without --proxy")
	}
	if c.Bool("proxy-wait") && len(proxies) == 0 {
		return errors.New("--proxy-wait without --proxy")
	}
	if c.IsSet("stream-window") && len(proxies) == 0 {
		return errors.New("--stream-window without --proxy")
	}
	if err := free.CheckStreamWindow(c.Int("stream-window") << 10); err != nil {
		return fmt.Errorf("--stream-window: %w", err)
	}
	if c.IsSet("session-window") && len(proxies) == 0 {
		return errors.New("--session-window without --proxy")
	}
	if err := free.CheckSessionWindow(c.Int("session-window") << 10); err != nil {
		return fmt.Errorf("--session-window: %w", err)
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
	// PT 1.0 gives a PT an absolute TOR_PT_STATE_LOCATION; a relative
	// --state-dir (or TMPDIR) is the user's working directory's.
	if stateDir, err = filepath.Abs(stateDir); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
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
	var check func(user, pass []byte) bool
	if path := c.String("proxy-auth"); path != "" {
		if check, err = free.LoadCredentials(path, func(msg string) { log.Warn(msg) }); err != nil {
			srv.Close()
			return err
		}
	}
	var keepers []*free.Keeper
	for _, t := range proxies {
		ln, err := listenTCP(t.listen)
		if err != nil {
			srv.Close()
			return fmt.Errorf("--proxy %s: %w", t.listen, err)
		}
		k := &free.Keeper{
			Dial: func(ctx context.Context) (net.Conn, error) {
				return client.Dial(ctx, t.alias, t.bridge, t.args)
			},
			Label:         t.alias,
			Logger:        log,
			SessionWait:   c.Duration("session-wait"),
			StreamWindow:  c.Int("stream-window") << 10,
			SessionWindow: c.Int("session-window") << 10,
		}
		keepers = append(keepers, k)
		p := &free.Proxy{Keeper: k, Check: check, RequestTimeout: c.Duration("socks-timeout"), Logger: log, Wait: c.Bool("proxy-wait")}
		serving.Go(func() { srv.ServeFunc(ln, p.Handle) })
		fmt.Printf("PROXY %s %s -> %s\n", t.alias, ln.Addr(), t.bridge)
	}
	m.Serving(order)
	serveUntilEnd(monitor, log, srv, client, keepers...)
	return nil
}

// parseTunnels reads the ADDR=ALIAS@BRIDGE values of flag (--tunnel,
// --proxy), each with its alias's --args.
func parseTunnels(c *cli.Context, flag string, args map[string]metadata.Args) ([]tunnel, error) {
	var tunnels []tunnel
	for _, t := range c.StringSlice(flag) {
		addr, rest, ok1 := strings.Cut(t, "=")
		alias, bridge, ok2 := strings.Cut(rest, "@")
		if !ok1 || !ok2 || addr == "" || alias == "" || bridge == "" {
			return nil, fmt.Errorf("--%s %q: want ADDR=ALIAS@BRIDGE, as in 127.0.0.1:2222=obfs3_obfs4@203.0.113.5:443", flag, t)
		}
		tunnels = append(tunnels, tunnel{addr, alias, bridge, args[alias]})
	}
	return tunnels, nil
}

func listenTCP(addr string) (*net.TCPListener, error) {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	return loopback.ListenTCP(a)
}
