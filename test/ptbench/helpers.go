package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/internal/gctune"
	"github.com/ptcombiner/ptcombiner/internal/loopback"
)

// The helper processes ptbench runs from its own executable, so that their
// CPU and memory are measured apart from the load generator's:
//
//	ptbench sink COOKIEFILE      echo servers: plain and Extended ORPort
//	ptbench relay-client         the reference relay, client side
//	ptbench relay-server         the reference relay, server side
//	ptbench floor METHOD SIZE N  one in-process transport alone (inproc.go)
//	ptbench engines CHAIN ...    the in-process engines, profiled (profile.go)
//
// Each prints its addresses on stdout and exits when its stdin closes.
func helperMain(mode string, args []string) {
	var err error
	switch mode {
	case "sink":
		err = runSink(args)
	case "relay-client":
		err = runRelayClient(os.Stdin, args)
	case "relay-server":
		err = runRelayServer(os.Stdin, args)
	case "floor":
		gctune.Start() // the combiners' pacing of the collector, for a floor of the same process kind
		err = runFloor(args)
	case "engines":
		gctune.Start()
		err = runEngines(args)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ptbench %s: %v\n", mode, err)
		os.Exit(1)
	}
}

// runSink echoes every connection on two listeners: PLAIN (raw TCP, the
// reference's destination) and EXT (an Extended ORPort that authenticates
// with the cookie in args[0], the combiners' destination, as a bridge's tor
// would be). It echoes by splice, unless args[1] is "small", which echoes
// through a 2 KiB buffer so that 10,000 idle connections hold no pipes.
func runSink(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: sink COOKIEFILE [small]")
	}
	small := len(args) > 1 && args[1] == "small"
	cookie, err := extorport.WriteCookieFile(args[0])
	if err != nil {
		return err
	}
	// No keepalive probes, as from the combiners (internal/loopback).
	plain, err := loopback.ListenTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	ext, err := loopback.ListenTCP(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	echo := func(c *net.TCPConn) {
		if sent, err := serveDownload(c); sent || err != nil {
			return
		}
		if small {
			io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 2048))
		} else {
			io.Copy(c, c)
		}
	}
	serve := func(ln *net.TCPListener, handshake bool) {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if handshake {
					c.SetDeadline(time.Now().Add(30 * time.Second))
					if _, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie}); err != nil {
						fmt.Fprintln(os.Stderr, "sink: Extended ORPort handshake:", err)
						return
					}
					if extorport.Okay(c) != nil {
						return
					}
					c.SetDeadline(time.Time{})
				}
				echo(c)
			}()
		}
	}
	go serve(plain, false)
	go serve(ext, true)
	fmt.Printf("PLAIN %s\nEXT %s\n", plain.Addr(), ext.Addr())
	io.Copy(io.Discard, os.Stdin)
	return nil
}

// downloadMagic begins a connection that asks the sink for a one-way
// download instead of an echo: the 8 bytes, then the size as 8 bytes
// big-endian. The sink sends that many bytes, ends its side and reads the
// connection to its end. No other first byte is 0xff (setups send 'x',
// streams zeros).
var downloadMagic = []byte("\xffPTBDOWN")

const downloadRequestLen = 16

// downloadRequest is the request for size bytes one way.
func downloadRequest(size int64) []byte {
	return binary.BigEndian.AppendUint64(slices.Clone(downloadMagic), uint64(size))
}

// halfCloser is a connection whose write side ends alone.
type halfCloser interface {
	io.ReadWriter
	CloseWrite() error
}

// serveDownload reads a connection's first bytes: a download request is
// served (sent is true); anything else is echoed, for the caller's echo to
// go on.
func serveDownload(c halfCloser) (sent bool, err error) {
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	for err == nil && n < downloadRequestLen && bytes.HasPrefix(downloadMagic, buf[:min(n, len(downloadMagic))]) {
		var m int
		m, err = c.Read(buf[n:])
		n += m
	}
	if n >= downloadRequestLen && bytes.HasPrefix(buf[:n], downloadMagic) {
		size := int64(binary.BigEndian.Uint64(buf[len(downloadMagic):downloadRequestLen]))
		if err := sendN(c, make([]byte, 256<<10), size); err != nil {
			return true, err
		}
		c.CloseWrite()
		io.Copy(io.Discard, c)
		return true, nil
	}
	if n > 0 {
		if _, werr := c.Write(buf[:n]); werr != nil {
			return false, werr
		}
	}
	return false, err
}

// helper is a running helper process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader // the helper's stdout
	done  chan struct{} // closed when the helper has exited
}

func startHelper(args ...string) (*helper, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return startProgram(self, args...)
}

// startProgram runs path with args as a helper: stdin a pipe, stdout
// read by expect, stderr ptbench's.
func startProgram(path string, args ...string) (*helper, error) {
	cmd := exec.Command(path, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// An os.Pipe rather than StdoutPipe: Wait, which runs at once below,
	// would close StdoutPipe's end under a reader.
	r, w, err := os.Pipe()
	if err != nil {
		stdin.Close()
		return nil, err
	}
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		stdin.Close()
		return nil, err
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewReader(r), done: make(chan struct{})}
	go func() { cmd.Wait(); close(h.done) }()
	return h, nil
}

// expect reads the helper's next line, which must be "WORD value", within
// 30 s.
func (h *helper) expect(word string) (string, error) { return h.expectWithin(word, 30*time.Second) }

// expectWithin is expect within d.
func (h *helper) expectWithin(word string, d time.Duration) (string, error) {
	type res struct {
		line string
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		l, err := h.out.ReadString('\n')
		ch <- res{l, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return "", fmt.Errorf("helper %v: %w", h.cmd.Args[1:], r.err)
		}
		got, ok := strings.CutPrefix(strings.TrimSpace(r.line), word+" ")
		if !ok {
			return "", fmt.Errorf("helper %v said %q, want %s", h.cmd.Args[1:], r.line, word)
		}
		return got, nil
	case <-time.After(d):
		return "", fmt.Errorf("helper %v said nothing in %v", h.cmd.Args[1:], d)
	}
}

func (h *helper) pid() int { return h.cmd.Process.Pid }

// close ends the helper: stdin closed, then SIGKILL after 5 s. The read
// end of its stdout is left to the garbage collector: an expect that timed
// out may still be reading it.
func (h *helper) close() {
	h.stdin.Close()
	h.wait()
}

// terminate ends a program that does not watch its stdin (a combiner run
// standalone): SIGTERM, then SIGKILL after 5 s.
func (h *helper) terminate() {
	h.cmd.Process.Signal(syscall.SIGTERM)
	h.stdin.Close()
	h.wait()
}

// wait waits 5 s for the helper to exit, then kills it.
func (h *helper) wait() {
	select {
	case <-h.done:
	case <-time.After(5 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
}

// closers runs cleanup functions in reverse order, once.
type closers struct {
	mu  sync.Mutex
	fns []func()
}

func (c *closers) add(f func()) { c.mu.Lock(); c.fns = append(c.fns, f); c.mu.Unlock() }

func (c *closers) run() {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}
