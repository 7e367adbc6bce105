// Package shim owns the per-connection plumbing of a chain:
//
//   - a SOCKS5 client (Handshake, DialSOCKS5) that asks a child PT to connect
//     to the next hop, offering exactly what a goptlib-based SOCKS server
//     accepts (PROTOCOLS.md A20, A21);
//   - a SOCKS5 server (ReadRequest, Grant, Reject) that reads tor's or an
//     application's request in the caller's goroutine, under a deadline, and
//     never inside Accept; and one for a proxy to any destination
//     (ReadProxyRequest, ReplyBound: CONNECT and UDP ASSOCIATE, optional
//     RFC 1929 credentials), with its UDP datagram header
//     (ParseUDPRequest, AppendUDPHeader) and the client's AssociateUDP;
//   - RFC 1928's address encoding (Addr: ATYP | ADDR | PORT), which package
//     free's wire format reuses;
//   - one-use loopback listeners (ListenOnce), each accepting exactly one
//     connection and closing itself on every path (DESIGN.md, "Client data
//     path");
//   - the copy loop (Pipe) that joins two TCP connections, propagates
//     half-close, honours cancellation and waits for both directions.
//
// Wire formats follow RFC 1928 (SOCKS5) and RFC 1929 (username/password
// authentication). Per-connection PT arguments travel in the RFC 1929
// username and password exactly as tor sends them: the username is the
// first min(len, 255) bytes of the encoded "k=v;k=v" string and the password
// the rest, or a single NUL byte when nothing is left (PROTOCOLS.md A20); the
// encoding itself belongs to package metadata.
//
// Every function here reads exactly the bytes of the SOCKS messages and no
// more, so bytes that follow a handshake stay in the socket for the copy loop.
package shim
