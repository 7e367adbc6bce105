// Package ptproc owns the parent side of the PT 1.0 managed-proxy protocol
// (pt-spec.txt section 3; PROTOCOLS.md section A) for one child program: the
// environment it is given, its launch, the parsing of its stdout, the draining
// of its stderr, and its end.
//
// The parent's rules it follows, in the words of the spec and of tor:
//
//   - Environment (A1-A7): TOR_PT_MANAGED_TRANSPORT_VER=1,
//     TOR_PT_STATE_LOCATION, TOR_PT_EXIT_ON_STDIN_CLOSE=1 and the role's
//     variables are built explicitly by [BuildEnv]; every TOR_PT_* variable
//     inherited from our own parent is stripped first, because "the child
//     inherits tor's whole environment".
//   - Stdout (A8-A17): "Keyword[ SP args]\n" lines, parsed by [ParseLine],
//     [ParseCmethod], [ParseSmethod] and [ParseLog]. VERSION, then (client
//     with a proxy) PROXY DONE, then the methods, then CMETHODS DONE or
//     SMETHODS DONE. After DONE only LOG and STATUS are meaningful; any
//     other protocol line is a violation, logged and ignored.
//   - Stderr (A18): never parsed for the protocol; logged line by line at
//     Debug and the last lines kept to quote in errors. [Process.LastWords]
//     picks the lines worth quoting when a child ends: from a Go runtime's
//     "panic:" or "fatal error:" line on, whose stack would otherwise push
//     the cause out of the last lines.
//   - Stdin (A3, STYLE "Avoid"): a pipe held open for the child's whole life;
//     closing it is the request to exit.
//   - Shutdown (A22): "parent closes stdin, waits, SIGTERM, then SIGKILL".
//     [Process.Close] closes stdin, waits up to Spec.StopGrace (2 s by
//     default) for the child's exit, sends SIGTERM, waits up to StopGrace
//     again, then sends SIGKILL: a child that honours stdin EOF never sees
//     a signal, and one that ignores both is gone 4 s after the request.
//     Every end takes this path, a failed or cancelled start included;
//     Start's ctx bounds the start only and sends no signal of its own.
//     (Tor itself sends SIGTERM and closes stdin at the same moment, A23.)
//
// Everything a child prints is untrusted. Text relayed onwards (to tor via
// goptlib, which panics on non-ASCII in LOG and *-ERROR lines, or to logs)
// passes through [Sanitize] first.
//
// Ownership: [Start] returns a [Process] that owns the child, its three pipes
// and three goroutines (stdout reader, stderr reader, waiter). [Process.Close]
// ends all of them on every path; after it returns no callback runs again.
package ptproc
