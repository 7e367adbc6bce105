// Command demo runs the whole product locally and tells what happened:
// ptcombiner-server run as a bridge's tor runs it, ptcombiner-client run as a
// user's tor runs it, a stand-in for the bridge's tor that reports what it
// is told on its Extended ORPort, and data sent through the chain and
// checked byte for byte.
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/internal/procstat"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
)

// logger receives the children's logs: nothing, unless -v.
var logger = slog.New(slog.NewTextHandler(io.Discard, nil))

func main() {
	binDir := flag.String("bin", "bin", "directory holding ptcombiner-client, ptcombiner-server and testpt")
	size := flag.Int("size", 4<<20, "bytes to send through the chain per connection")
	conns := flag.Int("conns", 3, "connections to open through the chain")
	testOnly := flag.Bool("testpt", false, "use the project's test PT even when obfs4proxy is installed")
	verbose := flag.Bool("v", false, "show every process's log")
	flag.Parse()
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if err := run(*binDir, *size, *conns, *testOnly); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(binDir string, size, conns int, testOnly bool) error {
	binDir, _ = filepath.Abs(binDir)
	var alias, spec, plugin string
	serverOpts := metadata.Args{}
	if p, err := exec.LookPath("obfs4proxy"); err == nil && !testOnly {
		alias, spec, plugin = "obfs3_obfs4", "obfs3|obfs4", "obfs3,obfs4="+p
	} else {
		fmt.Println("Using the project's test PT (each hop XORs with its own key, visible on the wire).")
		alias, spec, plugin = "t3", "test|test|test", "test="+filepath.Join(binDir, "testpt")
		serverOpts = metadata.Args{"0.key": {"17"}, "1.key": {"34"}, "2.key": {"51"}}
	}
	flags := []string{"--plugin", plugin, "--chain", alias + "=" + spec}
	if logger.Enabled(context.Background(), slog.LevelDebug) {
		flags = append(flags, "--log-level", "debug")
	}
	work, err := os.MkdirTemp("", "ptcombiner-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	tor, err := startFakeTor(filepath.Join(work, "tor-cookie"))
	if err != nil {
		return err
	}
	defer tor.close()
	fmt.Printf("1. The bridge's tor (a stand-in that echoes) listens on its Extended ORPort %s.\n", tor.addr)

	server, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-server", Path: filepath.Join(binDir, "ptcombiner-server"), Args: flags,
		Role: ptproc.Server, Methods: []string{alias}, StateDir: filepath.Join(work, "server"),
		Options: map[string]metadata.Args{alias: serverOpts}, ExtORPort: tor.addr, AuthCookieFile: tor.cookiePath,
		Logger: logger,
	})
	if err != nil {
		return fmt.Errorf("ptcombiner-server: %w", err)
	}
	defer server.Close()
	sm, ok := server.ServerMethods()[alias]
	if !ok {
		return fmt.Errorf("ptcombiner-server offered no %s: %v", alias, server.MethodErrors())
	}
	fmt.Printf("2. The bridge runs ptcombiner-server (pid %d), as from this torrc line:\n     ServerTransportPlugin %s exec ptcombiner-server %s\n",
		server.Pid(), alias, strings.Join(flags, " "))
	fmt.Printf("   It runs %d PT child process(es) and publishes:\n     SMETHOD %s %s ARGS:%s\n",
		len(procstat.Children(server.Pid())), alias, sm.Addr, metadata.EncodeSmethodArgs(sm.Args))
	bridgeLine := fmt.Sprintf("Bridge %s %s <FINGERPRINT> %s", alias, sm.Addr,
		strings.ReplaceAll(metadata.EncodeClientArgs(sm.Args), ";", " "))
	fmt.Printf("3. So a user's torrc says:\n     %s\n", bridgeLine)

	client, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: filepath.Join(binDir, "ptcombiner-client"), Args: flags,
		Role: ptproc.Client, Methods: []string{alias}, StateDir: filepath.Join(work, "client"), Logger: logger,
	})
	if err != nil {
		return fmt.Errorf("ptcombiner-client: %w", err)
	}
	defer client.Close()
	cm, ok := client.Methods()[alias]
	if !ok {
		return fmt.Errorf("ptcombiner-client offered no %s: %v", alias, client.MethodErrors())
	}
	fmt.Printf("4. The user's tor runs ptcombiner-client (pid %d), as from this torrc line:\n     ClientTransportPlugin %s exec ptcombiner-client %s\n     -> CMETHOD %s socks5 %s\n",
		client.Pid(), alias, strings.Join(flags, " "), alias, cm.Addr)

	user, pass, err := metadata.SOCKS5Credentials(metadata.EncodeClientArgs(sm.Args))
	if err != nil {
		return err
	}
	fmt.Printf("5. %d connection(s) of %d bytes each through %s, as the user's tor makes them:\n", conns, size, spec)
	for i := 0; i < conns; i++ {
		var lastErr error
		for attempt := 1; attempt <= 3; attempt++ {
			lastErr = oneConn(tor, cm.Addr.String(), sm.Addr, alias, user, pass, size, i+1)
			if lastErr == nil {
				break
			}
			fmt.Printf("     conn %d attempt %d: %v\n", i+1, attempt, lastErr)
		}
		if lastErr != nil {
			return lastErr
		}
	}
	kids := procstat.Children(client.Pid())
	fmt.Printf("6. ptcombiner-client runs %d PT child process(es) for the chain's hops.\n", len(kids))
	kids = append(kids, procstat.Children(server.Pid())...)
	client.Close()
	server.Close()
	time.Sleep(100 * time.Millisecond)
	left := 0
	for _, k := range kids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", k)); err == nil {
			left++
		}
	}
	fmt.Printf("7. Closed both combiners' stdin, as tor does at exit: %d of %d PT child process(es) left.\n", left, len(kids))
	if left != 0 {
		return fmt.Errorf("%d child process(es) outlived the combiners", left)
	}
	fmt.Println("demo OK")
	return nil
}

func oneConn(tor *fakeTor, socks string, bridge *net.TCPAddr, alias string, user, pass []byte, size, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := shim.DialSOCKS5(ctx, socks, bridge.String(), user, pass)
	if err != nil {
		return err
	}
	defer conn.Close()
	setup := time.Since(start)
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	// No half-close: obfs4proxy, like most PTs, closes both directions at
	// the first EOF. Write everything, read everything back, then close.
	start = time.Now()
	go conn.Write(data)
	got := make([]byte, size)
	if n, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("after %d of %d bytes: %w", n, size, err)
	}
	d := time.Since(start)
	if !bytes.Equal(got, data) {
		return fmt.Errorf("the %d bytes that came back differ from those sent", size)
	}
	// Ground truth: the client-side socket connected to the bridge's port.
	truth := establishedTo(bridge.Port)
	meta := tor.last()
	verdict := "MATCHES"
	if len(truth) != 1 || truth[0] != meta.UserAddr || meta.Transport != alias {
		verdict = "DOES NOT MATCH"
	}
	fmt.Printf("     conn %d: set up in %v, %d bytes out and back byte-exact in %v (%.0f MiB/s each way)\n",
		n, setup.Round(100*time.Microsecond), size, d.Round(time.Millisecond), float64(size)/(1<<20)/d.Seconds())
	fmt.Printf("             the bridge's tor was told USERADDR=%s TRANSPORT=%s; the client's socket is %v: %s\n",
		meta.UserAddr, meta.Transport, truth, verdict)
	if verdict != "MATCHES" {
		return fmt.Errorf("attribution %s", verdict)
	}
	return nil
}

// fakeTor stands in for the bridge's tor: an Extended ORPort server that
// records what each stream announces, then echoes it.
type fakeTor struct {
	addr, cookiePath string
	ln               net.Listener
	wg               sync.WaitGroup
	mu               sync.Mutex
	metas            []extorport.Meta
}

func startFakeTor(cookiePath string) (*fakeTor, error) {
	cookie, err := extorport.WriteCookieFile(cookiePath)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ft := &fakeTor{addr: ln.Addr().String(), cookiePath: cookiePath, ln: ln}
	ft.wg.Add(1)
	go func() {
		defer ft.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ft.wg.Add(1)
			go func() {
				defer ft.wg.Done()
				defer c.Close()
				meta, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie})
				if err != nil {
					return
				}
				ft.mu.Lock()
				ft.metas = append(ft.metas, meta)
				ft.mu.Unlock()
				if extorport.Okay(c) == nil {
					io.Copy(c, c)
				}
			}()
		}
	}()
	return ft, nil
}

func (ft *fakeTor) last() extorport.Meta {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if len(ft.metas) == 0 {
		return extorport.Meta{}
	}
	return ft.metas[len(ft.metas)-1]
}

func (ft *fakeTor) close() { ft.ln.Close(); ft.wg.Wait() }

// establishedTo lists the local ip:port of established TCP connections whose
// remote end is 127.0.0.1:port, from /proc/net/tcp.
func establishedTo(port int) []string {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	var out []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[2] != want || f[3] != "01" {
			continue
		}
		h, p, _ := strings.Cut(f[1], ":")
		ip, _ := strconv.ParseUint(h, 16, 32)
		pt, _ := strconv.ParseUint(p, 16, 16)
		out = append(out, fmt.Sprintf("%d.%d.%d.%d:%d", byte(ip), byte(ip>>8), byte(ip>>16), byte(ip>>24), pt))
	}
	return out
}
