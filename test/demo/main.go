// Command demo runs a local chain end to end and tells what happened: the
// server side of each PT wired to an echo service, ptcombiner-client run as
// tor runs it, and data sent through the chain and checked byte for byte.
//
// With obfs4proxy installed the chain is obfs3|obfs4 through real obfs4proxy
// processes; without it, test|test|test through the project's own test PT.
// `make demo` builds the binaries and runs it.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
)

func main() {
	binDir := flag.String("bin", "bin", "directory holding ptcombiner-client and testpt")
	size := flag.Int("size", 4<<20, "bytes to send through the chain per connection")
	conns := flag.Int("conns", 3, "connections to open through the chain")
	verbose := flag.Bool("v", false, "show every process's log")
	flag.Parse()
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if err := run(*binDir, *size, *conns); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

// logger receives the children's logs: nothing, unless -v.
var logger = slog.New(slog.NewTextHandler(io.Discard, nil))

type hop struct {
	method string
	path   string
	opts   metadata.Args
}

func run(binDir string, size, conns int) error {
	binDir, _ = filepath.Abs(binDir)
	client := filepath.Join(binDir, "ptcombiner-client")
	testpt := filepath.Join(binDir, "testpt")
	var hops []hop
	if p, err := exec.LookPath("obfs4proxy"); err == nil {
		hops = []hop{{"obfs3", p, nil}, {"obfs4", p, nil}}
	} else {
		fmt.Println("obfs4proxy is not installed: using the project's test PT (XOR per hop, visible on the wire)")
		hops = []hop{
			{"test", testpt, metadata.Args{"key": {"17"}}},
			{"test", testpt, metadata.Args{"key": {"34"}}},
			{"test", testpt, metadata.Args{"key": {"51"}}},
		}
	}
	var names []string
	for _, h := range hops {
		names = append(names, h.method)
	}
	spec := strings.Join(names, "|")
	alias := strings.Join(names, "_")
	work, err := os.MkdirTemp("", "ptcombiner-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	quiet := logger

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer echo.Close()
	go serveEcho(echo)
	fmt.Printf("1. echo service (stands for the bridge's tor) on %s\n", echo.Addr())

	// Server side, wired by hand: hop 0 forwards to the echo service, hop i
	// to hop i-1; the outermost listens for the client.
	next := echo.Addr().String()
	per := make([]metadata.Args, len(hops))
	for i, h := range hops {
		var opts map[string]metadata.Args
		if h.opts != nil {
			opts = map[string]metadata.Args{h.method: h.opts}
		}
		p, err := ptproc.Start(context.Background(), ptproc.Spec{
			Name: filepath.Base(h.path), Path: h.path, Role: ptproc.Server, Methods: []string{h.method},
			StateDir: filepath.Join(work, fmt.Sprintf("server-%d", i)), Options: opts, ORPort: next, Logger: quiet,
		})
		if err != nil {
			return fmt.Errorf("server side of hop %d (%s): %w", i, h.method, err)
		}
		defer p.Close()
		sm := p.ServerMethods()[h.method]
		fmt.Printf("2.%d server %-5s (%s, pid %d) listens on %s, forwards to %s, publishes ARGS:%s\n",
			i, h.method, filepath.Base(h.path), p.Pid(), sm.Addr, next, metadata.EncodeSmethodArgs(sm.Args))
		next = sm.Addr.String()
		per[i] = sm.Args
	}
	bridge := next
	args := metadata.JoinHops(per)
	fmt.Printf("3. the Bridge line a user would write:\n     Bridge %s %s <FINGERPRINT> %s\n", alias, bridge,
		strings.ReplaceAll(metadata.EncodeClientArgs(args), ";", " "))

	flags := []string{"--chain", alias + "=" + spec}
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		flags = append(flags, "--log-level", "debug")
	}
	byPath := map[string][]string{}
	var paths []string
	for _, h := range hops {
		if byPath[h.path] == nil {
			paths = append(paths, h.path)
		}
		if !slices.Contains(byPath[h.path], h.method) {
			byPath[h.path] = append(byPath[h.path], h.method)
		}
	}
	for _, p := range paths {
		flags = append(flags, "--plugin", strings.Join(byPath[p], ",")+"="+p)
	}
	fmt.Printf("4. ptcombiner-client, run as tor runs it:\n     ClientTransportPlugin %s exec %s %s\n", alias, client, strings.Join(flags, " "))
	comb, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: client, Args: flags, Role: ptproc.Client, Methods: []string{alias},
		StateDir: filepath.Join(work, "client"), Logger: quiet,
	})
	if err != nil {
		return fmt.Errorf("ptcombiner-client: %w", err)
	}
	defer comb.Close()
	cm, ok := comb.Methods()[alias]
	if !ok {
		return fmt.Errorf("ptcombiner-client offered no %s: %v", alias, comb.MethodErrors())
	}
	fmt.Printf("     -> CMETHOD %s socks5 %s (pid %d)\n", alias, cm.Addr, comb.Pid())

	user, pass, err := metadata.SOCKS5Credentials(metadata.EncodeClientArgs(args))
	if err != nil {
		return err
	}
	fmt.Printf("5. %d connection(s) of %d bytes each through %s:\n", conns, size, spec)
	for i := 0; i < conns; i++ {
		var lastErr error
		for attempt := 1; attempt <= 3; attempt++ {
			start := time.Now()
			lastErr = oneConn(cm.Addr.String(), bridge, user, pass, size)
			if lastErr == nil {
				d := time.Since(start)
				fmt.Printf("     conn %d: %d bytes out and back, byte-exact, %v (%.1f MiB/s each way)\n",
					i+1, size, d.Round(time.Millisecond), float64(size)/(1<<20)/d.Seconds())
				break
			}
			fmt.Printf("     conn %d attempt %d: %v\n", i+1, attempt, lastErr)
		}
		if lastErr != nil {
			return lastErr
		}
	}
	kids := childPids(comb.Pid())
	fmt.Printf("6. ptcombiner-client runs %d PT child process(es) for %d hops: %v\n", len(kids), len(hops), kids)
	comb.Close()
	time.Sleep(200 * time.Millisecond)
	left := 0
	for _, k := range kids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", k)); err == nil {
			left++
		}
	}
	fmt.Printf("7. closed ptcombiner-client's stdin, as tor does at exit: %d child process(es) left\n", left)
	if left != 0 {
		return fmt.Errorf("%d child process(es) outlived ptcombiner-client", left)
	}
	fmt.Println("demo OK")
	return nil
}

func oneConn(socks, bridge string, user, pass []byte, size int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := shim.DialSOCKS5(ctx, socks, bridge, user, pass)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	// No half-close: obfs4proxy, like most PTs, closes both directions at
	// the first EOF. Write everything, read everything back, then close.
	go conn.Write(data)
	got := make([]byte, size)
	if n, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("after %d of %d bytes: %w", n, size, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("the %d bytes that came back differ from those sent", size)
	}
	return nil
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// childPids lists pid's children: every thread's, since Go starts children
// from whichever thread runs the goroutine.
func childPids(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			var n int
			if _, err := fmt.Sscan(f, &n); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}
