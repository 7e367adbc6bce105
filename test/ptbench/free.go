package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ptcombiner/ptcombiner/internal/procstat"
)

// startFree runs the same chain free (docs/free.md): ptcombiner-server
// --free and ptcombiner-client --proxy, standalone, so that every
// connection of the load generator is a stream of one session over one
// chained connection, and goes to the plain sink.
func (e *env) startFree(pt string, hops int) (*topology, error) {
	return e.startFreeFrom(e.binDir, "", pt, hops)
}

// startFreeFrom is startFree with the combiners of binDir, named build in
// the table (the PT programs are e.binDir's).
func (e *env) startFreeFrom(binDir, build, pt string, hops int) (*topology, error) {
	t := &topology{kind: "f", pt: pt, hops: hops, build: build}
	prog, opts := e.ptProgram(pt)
	alias := fmt.Sprintf("%s%d", pt, hops)
	flags := []string{"--plugin", pt + "=" + prog, "--chain", alias + "=" + t.chain(), "--log-level", "warn"}
	config := e.dir("free-config")
	var line string
	for k, vs := range opts { // unprefixed: every hop
		for _, v := range vs {
			line += " " + k + "=" + v
		}
	}
	if line != "" {
		line = "ServerTransportOptions " + alias + line + "\n"
	}
	if err := os.WriteFile(config, []byte(line), 0o600); err != nil {
		return nil, err
	}
	server, err := startProgram(filepath.Join(binDir, "ptcombiner-server"), append(flags, "--config", config,
		"--listen", alias+"=127.0.0.1:0", "--free", "--allow", "127.0.0.0/8", "--state-dir", e.dir("free-server"))...)
	if err != nil {
		return nil, err
	}
	t.add(server.terminate)
	chain, err := server.expect("CHAIN") // alias addr ARGS args
	f := strings.Fields(chain)
	if err != nil || len(f) != 4 {
		t.run()
		return nil, fmt.Errorf("ptcombiner-server --free printed %q: %v", chain, err)
	}
	client, err := startProgram(filepath.Join(binDir, "ptcombiner-client"), append(flags,
		"--proxy", "127.0.0.1:0="+alias+"@"+f[1], "--args", alias+"="+f[3])...)
	if err != nil {
		t.run()
		return nil, err
	}
	t.add(client.terminate)
	proxy, err := client.expect("PROXY") // alias addr -> bridge
	p := strings.Fields(proxy)
	if err != nil || len(p) != 4 {
		t.run()
		return nil, fmt.Errorf("ptcombiner-client --proxy printed %q: %v", proxy, err)
	}
	t.socks, t.target = p[1], e.sinkPlain
	t.client, t.server = client.pid(), server.pid()
	t.pts = func() []int { return append(procstat.Children(t.client), procstat.Children(t.server)...) }
	// The client joins each application connection to its stream (a
	// copy) and the chain as for (a); the server each stream to its
	// destination, and the chain as for (a).
	t.splicesClient, t.splicesServer = hops, hops+1
	return t, nil
}
