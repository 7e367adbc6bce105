package main

// -profile-inproc: a Go CPU profile of the in-process engines under bulk
// load. ptcombiner-client and ptcombiner-server carry no profiler; the
// helper "engines" runs the same library (package chain: the client, its
// SOCKS server and the server, with the in-process transports) in one
// process, which ptbench loads as it loads the combiners, from the sink's
// Extended ORPort to the SOCKS port.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/metadata"
)

// runEngines is `ptbench engines CHAIN EXTORPORT COOKIE PROFILE`: it serves
// CHAIN of builtin methods in process, prints SOCKS, TARGET and ARGS, and
// profiles its CPU into PROFILE between the lines "start" and "stop" on
// stdin; it exits when stdin closes.
func runEngines(args []string) error {
	if len(args) != 4 {
		return errors.New("usage: engines CHAIN EXTORPORT COOKIE PROFILE")
	}
	hops, quiet := strings.Split(args[0], "|"), slog.New(slog.NewTextHandler(io.Discard, nil))
	var methods []string
	for _, h := range hops {
		if !slices.Contains(methods, h) {
			methods = append(methods, h)
		}
	}
	var cfg chain.Config
	if err := errors.Join(cfg.AddBuiltinFlag(strings.Join(methods, ",")), cfg.AddChainFlag("prof="+args[0]), cfg.Validate()); err != nil {
		return err
	}
	state, err := os.MkdirTemp("", "ptbench-engines-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	server := chain.NewServer(chain.ServerOptions{Config: &cfg, StateDir: filepath.Join(state, "server"), Logger: quiet,
		TorExtORPort: args[1], TorCookiePath: args[2]})
	defer server.Close()
	ctx := context.Background()
	pub, err := server.Start(ctx, []chain.Bind{{Alias: "prof", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
	if err == nil && pub[0].Err != nil {
		err = pub[0].Err
	}
	if err != nil {
		return err
	}
	client := chain.NewClient(chain.ClientOptions{Config: &cfg, StateDir: filepath.Join(state, "client"), Logger: quiet})
	defer client.Close()
	if err := client.Start(ctx, []string{"prof"})["prof"]; err != nil {
		return err
	}
	ln, err := loopback.ListenTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	socks := &chain.SOCKSServer{Client: client, Logger: quiet}
	defer socks.Close()
	go socks.Serve(ln, "prof")
	fmt.Printf("SOCKS %s\nTARGET %s\nARGS %s\n", ln.Addr(), pub[0].Addr, metadata.EncodeClientArgs(pub[0].Args))
	in := bufio.NewScanner(os.Stdin)
	var out *os.File
	for in.Scan() {
		switch in.Text() {
		case "start":
			if out, err = os.Create(args[3]); err != nil {
				return err
			}
			if err := pprof.StartCPUProfile(out); err != nil {
				return err
			}
		case "stop":
			pprof.StopCPUProfile()
			if err := out.Close(); err != nil {
				return err
			}
			fmt.Println("PROFILE written")
		}
	}
	return nil
}

// profileInproc loads the engines helper with the single stream and the
// streams of p over chain, profiling them into file.
func profileInproc(e *env, chainSpec, file string, p params) error {
	h, err := startHelper("engines", chainSpec, e.sinkExt, e.cookie, file)
	if err != nil {
		return err
	}
	defer h.close()
	t := &topology{kind: "e", build: "one process", hopPTs: strings.Split(chainSpec, "|")}
	var args string
	if t.socks, err = h.expect("SOCKS"); err == nil {
		if t.target, err = h.expect("TARGET"); err == nil {
			args, err = h.expect("ARGS")
		}
	}
	if err != nil {
		return err
	}
	if t.user, t.pass, err = metadata.SOCKS5Credentials(args); err != nil {
		return err
	}
	for k := 0; k < 5; k++ {
		c, err := t.dialTimeout(30 * time.Second)
		if err != nil {
			return fmt.Errorf("engines: warm-up: %w", err)
		}
		c.Close()
	}
	// One stream only: with client and server in one process, 8 streams
	// at once run far slower than in the two combiners, which would
	// profile this helper rather than the engines.
	cpu0 := procstat.CPUSeconds(h.pid())
	fmt.Fprintln(h.stdin, "start")
	d, _, err := streams(t, 1, p.size)
	fmt.Fprintln(h.stdin, "stop")
	if err != nil {
		return err
	}
	if _, err := h.expectWithin("PROFILE", time.Minute); err != nil {
		return err
	}
	fmt.Printf("\nCPU profile of the in-process engines, %s, client and server in one process (ptbench engines):\n", chainSpec)
	fmt.Printf("  %d MiB each way in 1 stream, %.0f MB/s, %.2f CPU s per GiB each way; go tool pprof -top %s\n",
		p.size>>20, float64(p.size)/d.Seconds()/1e6, (procstat.CPUSeconds(h.pid())-cpu0)/(float64(p.size)/(1<<30)), file)
	return nil
}
