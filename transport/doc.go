// Package transport owns what a hop of a chain is as a Go value: the small
// interfaces a transport implements on each side, chains of transports that
// are transports themselves, the in-process transports (obfs2, obfs3, obfs4
// and scramblesuit, behind one adapter), bytestream transforms, and a
// listener that runs a server's handshakes.
//
// # The interfaces
//
// They follow the abstract interfaces of the PT 2.0 design notes
// (seeds/pt2-work-in-progress.txt, "Abstract Interfaces"), in Go's own
// shapes (PROTOCOLS.md D1: a transport's Dial returns a net.Conn, a server
// hands out a net.Listener), each with at most three methods:
//
//   - [ClientTransport] is the seed's transport factory: started with its
//     client configuration ([ClientConfig]), it offers a [Client], a set of
//     named [Dialer]s, the seed's connection factories (obfs4proxy offers
//     obfs2, obfs3, obfs4, ...).
//   - [Dialer] takes the connection settings (tor's per-connection k=v
//     arguments, [metadata.Args]) and a destination, and returns a [Conn]: a
//     net.Conn that also reports its [Stats] (the seed's "additional get
//     stats method").
//   - [ServerTransport] is the seed's server factory for one method: started
//     with a [ServerConfig], it loads the server's state from the state
//     directory, generating it on first use (the seed's "generate
//     configuration"), and returns a [Server], whose ClientArgs are the
//     client's half of that configuration (obfs4's cert and iat-mode, the
//     ARGS of an SMETHOD line) and whose WrapConn runs the server side on an
//     accepted connection.
//   - [Manager] is the seed's server manager: something running that can be
//     stopped (Close) and asked for its [ServerStats]. [Listen] returns one
//     that is also a net.Listener, so any Go server (net/http, a copy loop
//     to tor's ORPort) can serve through a transport: the seed's "listen".
//
// # Why these shapes
//
// A hop's own connection runs over something beneath it: the network for the
// outermost hop, the next hop outward for every other. Dial therefore takes
// that something as an argument, a [DialFunc], rather than fixing it when the
// transport is built (as x/net/proxy does with its forward dialer): the
// settings of the hop beneath differ per connection (each bridge has its own
// obfs4 cert), so a chain can only bind them when it dials. This is also the
// shape of the module the in-process transports come from (its
// base.ClientFactory.Dial takes a dial function), which is what lets hops
// nest in one process with no loopback connection between them.
//
// The server side has no such argument: the connection a server wraps is
// already there, accepted by the caller or unwrapped by the hop outside it,
// so WrapConn takes it and returns the inner side. A server that listens by
// itself (an external program) fits the same method by dialling its own port
// and returning the connection it hands on.
//
// Every call that starts a transport or runs a handshake takes a
// context.Context first; cancelling it ends a handshake by closing the connection beneath (the transports of the
// module take no context). On error, Dial and WrapConn have closed every
// connection they opened or were given, so a caller never has to guess who
// owns what.
//
// # Chains
//
// A chain a|b|c carries the application's bytes into a first; c is on the
// wire (DESIGN.md, "Chain syntax and names"). [ClientChain] is a [Dialer]:
// for one connection it splits the chain's arguments by hop
// ([metadata.SplitHops]: "N.key" for hop N, an unprefixed key for every hop),
// dials c over the network, b over c's connection and a over b's. Because
// the chain is itself a Dialer it can be a hop of another chain, and its
// hop-numbered arguments nest ("1.0.cert" is hop 0 of the chain at hop 1).
// [ServerChain] is a [Server]: it wraps the accepted connection with c's
// server, the result with b's, then a's, and publishes the hops' client
// arguments under their hop numbers ([metadata.JoinHops]: "2.cert=...").
// A failing hop is named by a [HopError].
//
// # Deadlines
//
// The obfs4 and scramblesuit connections of the module refuse SetDeadline
// (ENOTSUP), yet their handshakes set deadlines on the connection beneath
// them, so obfs4 over obfs4 would fail with "operation not supported". Every
// [Conn] of this package therefore sends deadlines straight to the raw
// connection at the bottom of its stack: a deadline bounds all the I/O a
// Read or Write causes, down to the socket. As with crypto/tls, a Write
// that times out may leave a transport's framing broken: close the
// connection then. CloseWrite likewise half-closes the raw connection once
// the transports above it have written everything (theirs write through at
// once), so half-close crosses every hop.
//
// # Bytestreams
//
// An experimental transport can be written as a [Bytestream]: an encoder and
// a decoder of the byte stream ([Codec]), nothing of networking. Backpressure
// is the Go one: the encoder writes into the connection and blocks while it
// blocks; the decoder reads as its reader is read. An encoder may hold bytes
// back to coalesce them (the seed's Nagle-style delayed output) until the hop
// flushes it at the end of each application Write. A Bytestream is both a
// Dialer and a ServerTransport, so it is a hop on both sides.
//
// # In-process transports
//
// [BuiltinClient] and [BuiltinServer] give obfs2, obfs3, obfs4 (both sides)
// and scramblesuit (client only) from the module gitlab.com/yawning/obfs4.git.
// Only the file builtin.go knows that module, so moving to its maintained
// successor (lyrebird) changes one file. obfs4's server state (node id, keys,
// drbg seed) lives in the state directory the caller gives, in the module's
// own obfs4_state.json, beside the bridge line it writes
// (obfs4_bridgeline.txt); a malformed state file is refused at Start with
// its path. The adapter also works around the module's obfs4 client leaving
// the bytes that came with the server's handshake undecoded until more
// arrive (the stall PROTOCOLS.md reports of obfs4proxy, which shares the
// code), so a protocol whose server speaks first (obfs3 inside obfs4) does
// not hang in process.
//
// # Examples
//
// ExampleServerChain serves obfs3|obfs4 in process and ExampleClientChain
// dials it, with this package alone. Package chain runs such chains as
// engines (ptcombiner's own, with PT programs and tor's Extended ORPort
// as well); the programs examples/serve-chain and examples/dial use it.
package transport
