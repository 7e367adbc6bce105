package chain_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// bridge serves obfs3|obfs4 in this process, in front of an echo, and
// returns its address and the arguments its bridge line carries.
func bridge(stateDir string) (*transport.Listener, metadata.Args) {
	var hops []transport.Server
	for _, m := range []string{"obfs3", "obfs4"} {
		st, err := transport.BuiltinServer(m)
		if err != nil {
			log.Fatal(err)
		}
		srv, err := st.Start(context.Background(), transport.ServerConfig{StateDir: stateDir + "/" + m})
		if err != nil {
			log.Fatal(err)
		}
		hops = append(hops, srv)
	}
	srv := transport.ServerChain(hops...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	l := transport.Listen(srv, ln)
	go echo(l)
	return l, srv.ClientArgs()
}

// A client of in-process hops: configured as with --builtin obfs3,obfs4
// --chain o=obfs3|obfs4, it starts no process. A hop served by a PT
// program (AddPluginFlag "obfs4=/usr/bin/obfs4proxy") or by an unmanaged
// PT ("obfs4=socks5:127.0.0.1:9050") is used the same way; see
// examples/dial for a chain that mixes them.
func ExampleClient() {
	dir, err := os.MkdirTemp("", "example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	b, args := bridge(dir)
	defer b.Close()

	var cfg chain.Config
	for _, err := range []error{cfg.AddBuiltinFlag("obfs3,obfs4"), cfg.AddChainFlag("o=obfs3|obfs4"), cfg.Validate()} {
		if err != nil {
			log.Fatal(err)
		}
	}
	client := chain.NewClient(chain.ClientOptions{Config: &cfg, StateDir: dir})
	defer client.Close()
	if err := client.Start(context.Background(), []string{"o"})["o"]; err != nil {
		log.Fatal(err)
	}
	conn, err := client.Dial(context.Background(), "o", b.Addr().String(), args) // args: 1.cert, 1.iat-mode
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "hello")
	reply := make([]byte, 5)
	if _, err := io.ReadFull(conn, reply); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s, %d bytes each way, %d children\n", reply, conn.Stats().Read, len(client.Processes()))
	// Output: hello, 5 bytes each way, 0 children
}

// A whole client for applications: each listener serves one chain to
// applications that speak SOCKS5 as tor does (the bridge as the target,
// the chain's arguments as username and password).
func ExampleSOCKSServer() {
	var cfg chain.Config
	cfg.AddBuiltinFlag("obfs4")
	client := chain.NewClient(chain.ClientOptions{Config: &cfg})
	defer client.Close()
	srv := &chain.SOCKSServer{Client: client, MaxConns: 100}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- srv.Serve(ln, "obfs4") }()
	srv.Close() // ends every connection; Serve returns
	fmt.Println(<-done)
	// Output: chain: SOCKS server closed
}
