// Package metadata owns the argument encodings of the pluggable-transport
// protocols and the per-hop namespace of a chain.
//
// Three encodings meet in a combiner (pt-spec.txt, PROTOCOLS.md A6, A14, A19):
//
//   - per-connection client arguments, "k=v;k=v", sent by tor in the SOCKS
//     username and password; a key ends at the first unescaped '=', a value at
//     the next unescaped ';', and '\' escapes the byte after it;
//   - SMETHOD ARGS, "k=v,k=v", in which '=', ',' and '\' are escaped by '\';
//   - TOR_PT_SERVER_TRANSPORT_OPTIONS, "name:k=v;name:k=v", in which ':', ';',
//     '=' and '\' are escaped by '\'.
//
// Every encoder is deterministic: keys sorted, values of one key in order.
//
// A chain a|b|c has hops numbered from 0 (innermost). A key written "N.key"
// belongs to hop N only, an unprefixed key to every hop (DESIGN.md, "Per-hop
// arguments"); SplitHops and JoinHops convert between the chain's single
// argument list and the hops' own lists.
package metadata
