package transport_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// serveChain serves the server side of obfs3|obfs4 on a loopback port; each
// connection's first line is answered and the connection closed. It
// returns the listener (a transport.Manager too) and the arguments a client
// needs, the ones a bridge publishes.
func serveChain(stateDir string) (*transport.Listener, metadata.Args, error) {
	ctx := context.Background()
	var hops []transport.Server
	for i, method := range []string{"obfs3", "obfs4"} {
		st, err := transport.BuiltinServer(method)
		if err != nil {
			return nil, nil, err
		}
		srv, err := st.Start(ctx, transport.ServerConfig{StateDir: filepath.Join(stateDir, fmt.Sprint(i, "-", method))})
		if err != nil {
			return nil, nil, err
		}
		hops = append(hops, srv)
	}
	chain := transport.ServerChain(hops...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	l := transport.Listen(chain, ln)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				fmt.Fprintf(c, "server got %q", buf[:n])
			}()
		}
	}()
	return l, chain.ClientArgs(), nil
}

// Serving a chain: each hop's server starts from its state directory (obfs4
// generates its identity there on first use), the chain publishes the
// hops' client arguments under their hop numbers, and Listen runs the
// handshakes and hands out the application's connections.
func ExampleServerChain() {
	dir, err := os.MkdirTemp("", "example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	st, err := transport.BuiltinServer("obfs4")
	if err != nil {
		log.Fatal(err)
	}
	obfs4, err := st.Start(context.Background(), transport.ServerConfig{StateDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	st, err = transport.BuiltinServer("obfs3")
	if err != nil {
		log.Fatal(err)
	}
	obfs3, err := st.Start(context.Background(), transport.ServerConfig{})
	if err != nil {
		log.Fatal(err)
	}
	chain := transport.ServerChain(obfs3, obfs4) // obfs3|obfs4: obfs4 is on the wire
	defer chain.Close()

	var keys []string
	for k := range chain.ClientArgs() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Println("bridge line arguments:", keys)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	l := transport.Listen(chain, ln)
	defer l.Close()
	fmt.Println("accepted so far:", l.Stats().Accepted)
	// Output:
	// bridge line arguments: [1.cert 1.iat-mode]
	// accepted so far: 0
}

// Dialing through a chain: start the in-process client methods, chain
// their dialers innermost first, and dial with the bridge's arguments
// ("1.cert" goes to hop 1, obfs4).
func ExampleClientChain() {
	dir, err := os.MkdirTemp("", "example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bridge, bridgeArgs, err := serveChain(dir) // a bridge to dial
	if err != nil {
		log.Fatal(err)
	}
	defer bridge.Close()

	client, err := transport.BuiltinClient().Start(context.Background(),
		transport.ClientConfig{Methods: []string{"obfs3", "obfs4"}})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	dialers := client.Dialers()
	chain := transport.ClientChain(dialers["obfs3"], dialers["obfs4"])

	conn, err := chain.Dial(context.Background(), bridgeArgs, bridge.Addr().String(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "hello")
	reply, err := io.ReadAll(conn)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(reply))
	fmt.Println("bytes written:", conn.Stats().Written)
	// Output:
	// server got "hello"
	// bytes written: 5
}
