// Package free owns the seed's bound-to-free adapter (pt2-work-in-progress,
// "Bound vs. Free", "UDP vs TCP"): many TCP streams and UDP associations,
// to any destination, multiplexed through one chained connection, with a
// matching end on each side.
//
//   - The wire format (wire.go): an smux session (protocol version 2) over
//     the chained connection; each stream opens with a Header (command and
//     destination), which the server answers with a SOCKS5 reply code;
//     a UDP association's stream then carries length-prefixed frames,
//     each a datagram with its address. docs/free.md gives it byte by
//     byte.
//   - The client end: Keeper keeps the one session (dialled on first use,
//     re-dialled with backoff when it breaks), and Proxy is the SOCKS5
//     server (RFC 1928 CONNECT and UDP ASSOCIATE, optionally RFC 1929
//     username/password from LoadCredentials) whose requests become
//     streams.
//   - The server end: Server serves the sessions of finished chained
//     connections and dials each destination under a Policy: --allow and
//     --deny rules over built-in denials of the server's own host and
//     networks; names are resolved on the server and the addresses
//     checked are the ones dialled; each UDP association has one socket
//     and an idle timeout.
//
// The chains themselves are package chain's: a Keeper dials through
// chain.Client, and chain.Server hands its finished streams to
// Server.ServeConn (ServerOptions.Streams).
package free
