package chain_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"slices"

	"github.com/ptcombiner/ptcombiner/chain"
)

// echo answers every connection ln accepts with what it gets, until ln is
// closed.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); io.Copy(c, c) }()
	}
}

// A bridge of in-process hops in front of a TCP service, without tor:
// configured as with --builtin obfs3,obfs4 --chain o=obfs3|obfs4, it starts
// no process, keeps obfs4's keys in StateDir (so its cert survives a
// restart), and hands every finished stream to TorORPort. A hop served by a
// PT program (AddPluginFlag "obfs4=/usr/bin/obfs4proxy") is configured the
// same way; for tor's Extended ORPort, set TorExtORPort and TorCookiePath
// instead. The program examples/serve-chain serves this chain until it is
// stopped.
func ExampleServer() {
	dir, err := os.MkdirTemp("", "example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	service, err := net.Listen("tcp", "127.0.0.1:0") // a TCP service
	if err != nil {
		log.Fatal(err)
	}
	defer service.Close()
	go echo(service)

	var cfg chain.Config
	for _, err := range []error{cfg.AddBuiltinFlag("obfs3,obfs4"), cfg.AddChainFlag("o=obfs3|obfs4"), cfg.Validate()} {
		if err != nil {
			log.Fatal(err)
		}
	}
	server := chain.NewServer(chain.ServerOptions{Config: &cfg, StateDir: dir, TorORPort: service.Addr().String()})
	defer server.Close() // ends every connection
	published, err := server.Start(context.Background(),
		[]chain.Bind{{Alias: "o", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
	if err != nil {
		log.Fatal(err)
	}
	p := published[0]
	if p.Err != nil {
		log.Fatal(p.Err) // this chain cannot be served, and why
	}
	var keys []string
	for k := range p.Args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Println("bridge line arguments:", keys)

	// The client's side, as in ExampleClient.
	client := chain.NewClient(chain.ClientOptions{Config: &cfg})
	defer client.Close()
	conn, err := client.Dial(context.Background(), "o", p.Addr.String(), p.Args)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "hello")
	reply := make([]byte, 5)
	if _, err := io.ReadFull(conn, reply); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s from the service, %d children\n", reply, len(server.Processes()))
	// Output:
	// bridge line arguments: [1.cert 1.iat-mode]
	// hello from the service, 0 children
}
