// Command dial sends its standard input through a chain of pluggable
// transports to a bridge and writes what comes back to its standard
// output. The chain mixes the two kinds of hop: obfs3 runs in this
// process, obfs4 in obfs4proxy, a PT 1.0 program started once and
// reached over SOCKS5. It uses only the public API of package chain.
//
// Against a bridge that runs ptcombiner-server for obfs3|obfs4 in front of
// a TCP service (its CHAIN line gives the arguments):
//
//	echo hello | go run ./examples/dial -bridge 203.0.113.5:443 -args '1.cert=...;1.iat-mode=0'
package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log"
	"os"
	"time"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/metadata"
)

func main() {
	bridge := flag.String("bridge", "", "the bridge's `HOST:PORT`")
	args := flag.String("args", "", "the chain's arguments, tor's `K=V;K=V` with N. hop prefixes")
	obfs4proxy := flag.String("obfs4proxy", "/usr/bin/obfs4proxy", "the PT program that serves obfs4")
	wait := flag.Duration("wait", 2*time.Second, "how long to read replies after the end of stdin")
	flag.Parse()
	if *bridge == "" {
		log.Fatal("-bridge is required")
	}
	bridgeArgs, err := metadata.ParseClientArgs(*args)
	if err != nil {
		log.Fatalf("-args: %v", err)
	}

	// The same configuration as --builtin obfs3 --plugin obfs4=PATH
	// --chain obfs3_obfs4='obfs3|obfs4'.
	var cfg chain.Config
	for _, err := range []error{
		cfg.AddBuiltinFlag("obfs3"),
		cfg.AddPluginFlag("obfs4=" + *obfs4proxy),
		cfg.AddChainFlag("obfs3_obfs4=obfs3|obfs4"),
		cfg.Validate(),
	} {
		if err != nil {
			log.Fatal(err)
		}
	}
	stateDir, err := os.MkdirTemp("", "dial-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(stateDir)
	client := chain.NewClient(chain.ClientOptions{Config: &cfg, StateDir: stateDir})
	defer client.Close() // ends obfs4proxy too

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := client.Start(ctx, []string{"obfs3_obfs4"})["obfs3_obfs4"]; err != nil {
		log.Fatal(err) // e.g. obfs4proxy is not installed
	}
	conn, err := client.Dial(ctx, "obfs3_obfs4", *bridge, bridgeArgs)
	if err != nil {
		log.Fatal(err) // a *chain.HopError: which hop failed, and why
	}
	defer conn.Close()
	go func() {
		io.Copy(conn, os.Stdin)
		// No half-close: most PT programs (obfs4proxy among them) close
		// both directions at the first EOF. The reply gets a moment.
		conn.SetReadDeadline(time.Now().Add(*wait))
	}()
	if _, err := io.Copy(os.Stdout, conn); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		log.Print(err)
	}
	s := conn.Stats()
	log.Printf("%d bytes sent, %d received; the chain was set up in %v", s.Written, s.Read, s.Setup.Round(time.Millisecond))
}
