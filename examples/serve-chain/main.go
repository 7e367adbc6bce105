// Command serve-chain serves a chain of pluggable transports in front of a
// TCP service: obfs3|obfs4, both in this process, so it needs no PT program
// and no tor. Like ptcombiner-server --listen, it prints the arguments a
// client needs (CHAIN ALIAS ADDR ARGS ...) and serves until SIGINT or
// SIGTERM. It uses only the public API of package chain.
//
// obfs4 keeps its keys in the state directory: keep it, and the cert in
// the arguments stays the same on every start.
//
//	go run ./examples/serve-chain -listen 127.0.0.1:4430 -forward 127.0.0.1:22 -state-dir /var/lib/serve-chain
//
// The client's side is examples/dial, given what the CHAIN line says:
//
//	echo hello | go run ./examples/dial -bridge 127.0.0.1:4430 -args '1.cert=...;1.iat-mode=0'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/metadata"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "the chain's public `ADDR` (port 0: any free port)")
	forward := flag.String("forward", "", "the TCP service `HOST:PORT` that the streams go to")
	stateDir := flag.String("state-dir", "", "`DIR` for obfs4's keys (keep it: the cert depends on it)")
	flag.Parse()
	if err := run(*listen, *forward, *stateDir); err != nil {
		log.Fatal(err)
	}
}

func run(listen, forward, stateDir string) error {
	if forward == "" || stateDir == "" {
		return errors.New("-forward and -state-dir are required")
	}
	addr, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	// The same configuration as --builtin obfs3,obfs4
	// --chain obfs3_obfs4='obfs3|obfs4'.
	var cfg chain.Config
	if err := errors.Join(cfg.AddBuiltinFlag("obfs3,obfs4"), cfg.AddChainFlag("obfs3_obfs4=obfs3|obfs4"), cfg.Validate()); err != nil {
		return err
	}
	server := chain.NewServer(chain.ServerOptions{
		Config:    &cfg,
		StateDir:  stateDir,
		TorORPort: forward, // or TorExtORPort and TorCookiePath, for tor
	})
	defer server.Close() // ends every connection

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	published, err := server.Start(ctx, []chain.Bind{{Alias: "obfs3_obfs4", Addr: addr}})
	if err != nil {
		return err
	}
	p := published[0]
	if p.Err != nil {
		return fmt.Errorf("chain %s: %w", p.Alias, p.Err) // e.g. malformed obfs4 state
	}
	fmt.Printf("CHAIN %s %s ARGS %s\n", p.Alias, p.Addr, metadata.EncodeClientArgs(p.Args))
	<-ctx.Done()
	return server.Close()
}
