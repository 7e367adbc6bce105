package main

// description is the help's and the man page's DESCRIPTION (markdown, for
// urfave/cli's ToMan; it reads as plain text in --help too).
const description = `Tor runs ptcombiner-server as a ServerTransportPlugin on a bridge. For each chain of pluggable
transports (PTs) it listens where tor says, runs the server side of each hop's PT, and hands every finished
stream to tor's Extended ORPort with the real client's address and the chain's alias.

    BridgeRelay 1
    ExtORPort auto
    ServerTransportPlugin obfs3_obfs4 exec /usr/bin/ptcombiner-server
        --plugin obfs3,obfs4=/usr/bin/obfs4proxy --chain obfs3_obfs4=obfs3|obfs4
    ServerTransportListenAddr obfs3_obfs4 0.0.0.0:8443

(The ServerTransportPlugin line is one line in a torrc.) Tor writes the chain's Bridge line for users,
with each hop's arguments numbered, to DataDirectory/bridgelines.

Run without tor, --listen and --forward put a chain in front of any TCP service.`
