// Package chain owns what a chain is and how one runs: the chain syntax and
// aliases, the torrc-like configuration, the PT programs a set of chains
// needs (one process per program), the client engine that sets up each
// chained connection, its SOCKS listener, and the server engine.
//
// # The client engine
//
// A chain a|b|c carries the application's bytes into a first; c is what the
// network sees. Every hop is a transport.Dialer, of one of three kinds
// (PluginKind), freely mixed in one chain:
//
//   - a managed PT 1.0 program (ExecPlugin), started once for all the
//     chains that need it, reached over its SOCKS5 port;
//   - an unmanaged PT (SOCKSPlugin), already listening on a SOCKS5 port
//     that someone else runs; Start checks that the port answers;
//   - an in-process transport (BuiltinPlugin): obfs2, obfs3, obfs4 and
//     scramblesuit of transport.BuiltinClient, with no process at all. A
//     chain of in-process hops only starts no child.
//
// Per connection, route.dial sets up hop i over what route.under(i) says
// comes next: hop i+1, or, for the outermost hop, the network. The
// composition is lazy, innermost first: a hop dials the hops outside it
// only when it needs them, so a hop that never gets that far is the one
// blamed and the hops outside it were never asked.
//
//   - A PT with nothing outside it is asked over SOCKS for the bridge and
//     reaches it itself (a managed outermost child through TOR_PT_PROXY,
//     which only those children are given).
//   - A PT with a hop outside it is asked to connect to a one-use loopback
//     shim (shim.ListenOnce). On the shim's single accept the hops outside
//     are dialled, and the PT's connection is piped to them at once (spliced
//     when both sides are TCP): the PT may need them for its own handshake.
//   - An in-process hop over a PT needs no shim: its connection runs over
//     the SOCKS connection to that PT. An in-process hop over another
//     nests in-process, and an in-process outermost hop dials the bridge
//     itself, through tor's proxy when there is one (socks5, socks4a or
//     http CONNECT).
//
// A PT's hop is ready only when the PT has granted and the hops outside it
// are up, so a PT that grants before its own next hop is set up cannot make
// the application's request look granted. When it fails, a failure of the
// hops outside that comes in within a short grace (they failed first, and
// it only followed) is the one reported, as a HopError naming the hop, its
// method, its program and SOCKS address, and what it was asked to reach; a
// PT that never connects to its shim is named so, with the time waited.
// The whole setup is bounded by ClientOptions.SetupTimeout and the
// caller's ctx. After the application closes its connection, each shim's
// pipe may drain for ClientOptions.Linger; Client.Close ends every
// connection, pipe and child.
//
// # The server engine
//
// Per client connection, Server.next walks the chain from its outermost
// hop inward and says which hop comes next: an in-process hop unwraps the
// stream in place (WrapConn) and the walk goes on; a PT program's hop gets
// the stream over a loopback connection whose local address is its stamp,
// and the walk goes on when the program hands the stream back on its own
// Extended ORPort, where USERADDR (and TRANSPORT) find the stamp, so a
// stream is never matched by arrival order. Below hop 0 the stream goes to
// tor, with the real client's address and the alias (toTor), or to the
// TCP service.
//
// An outermost hop that must serve the public address itself (an indirect
// PT's server: meek, snowflake, webtunnel, or a method the configuration
// declares Indirect) is given the chain's bind address as its
// TOR_PT_SERVER_BINDADDR and owns that listener; so may a direct PT's, for
// chains named by OuterListens (Config.OutermostListens). Nothing is dialled
// into it: each of its Extended ORPort arrivals starts a chain connection
// (arrive), counted by MaxConns, attributed with the USERADDR it reports,
// unchanged, or none, and the hops inside it are stamped as ever.
//
// # Observing
//
// ClientOptions.Observer and ServerOptions.Observer, when set, hear every
// chained connection (opened, failed at a hop for a FailReason, or
// established, its bytes, closed), every child's start, exit and restart,
// and the server's Extended ORPort exchanges (observe.go holds the hooks
// and the vocabulary). The programs set one for --metrics and STATUS
// lines (package internal/metrics); a nil Observer costs nothing.
//
// # The Go API
//
// NewClient, then Start with the chains wanted, returns a Client whose Dial
// gives a Conn (a transport.Conn: bytes each way and the setup time).
// Dialer adapts a chain to golang.org/x/net/proxy; Client.Transport makes
// a chain a transport.Dialer, so it can be a hop of transport.ClientChain.
// SOCKSServer serves chains to applications that speak SOCKS5 the way tor
// speaks to a PT: with it a Go program has the whole of ptcombiner-client;
// its ServeFunc runs any handler under the same lifecycle (package free's
// proxy). ServerOptions.Streams hands the server's finished streams to
// something other than tor (package free's end of a free transport).
// ExampleClient dials through an in-process chain; the program
// examples/dial dials through a chain that mixes an in-process hop with a
// PT program.
//
// NewServer, then Start with one Bind per chain (alias, address, options),
// serves chains on a bridge: each Published says where a chain listens and
// what its clients need (the hops' ClientArgs, N.cert for hop N), or why it
// cannot be served. Finished streams go to tor's Extended ORPort, or to
// any TCP service (ServerOptions.TorORPort). ExampleServer serves an
// in-process chain in front of a TCP service; the program
// examples/serve-chain does so until it is stopped, for examples/dial.
package chain
