package main

// description is the help's and the man page's DESCRIPTION (markdown, for
// urfave/cli's ToMan; it reads as plain text in --help too).
const description = `Tor runs ptcombiner-client as a ClientTransportPlugin. Each chain of pluggable transports (PTs) is offered
to tor under an alias (a C identifier). The application's bytes go through the chain's hops innermost first;
the last hop is what a censor sees. Each PT program is started once, and every connection is wired through
the chain on loopback.

    UseBridges 1
    ClientTransportPlugin obfs3_obfs4 exec /usr/bin/ptcombiner-client
        --plugin obfs3,obfs4=/usr/bin/obfs4proxy --chain obfs3_obfs4=obfs3|obfs4
    Bridge obfs3_obfs4 192.0.2.10:443 FINGERPRINT 1.cert=... 1.iat-mode=0

(The ClientTransportPlugin line is one line in a torrc.) A bridge argument N.key=value goes to hop N only,
0 being the innermost; key=value goes to every hop.

Run without tor, --listen and --tunnel serve chains to any application.`
