// Package chain owns what a chain is and how one runs: the chain syntax and
// aliases, the torrc-like configuration, the PT programs a set of chains
// needs (one process per program), and, on the client side, the setup of
// each chained connection through one-use shims in reverse order.
//
// A chain a|b|c carries the application's bytes into a first; c is what the
// network sees. For one connection to a bridge B the client asks a (over
// SOCKS, with hop 0's arguments) to connect to shim 1; shim 1, on its single
// accept, asks b to connect to shim 2; shim 2 asks c to connect to B. The
// application's request is granted only when a grants its own, and when a
// hop fails the error names the hop (HopError) and carries its SOCKS reply.
package chain
