package main

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// A chain that takes the bytes and sends nothing back fails streams with
// a timeout once the grace is over, and leaves no connection open.
func TestStreamsStalled(t *testing.T) {
	defer func(g time.Duration) { stallGrace = g }(stallGrace)
	stallGrace = 200 * time.Millisecond
	var far []net.Conn
	dial := func() (net.Conn, error) {
		near, f := net.Pipe()
		far = append(far, f)
		go io.Copy(io.Discard, f) // a sink that never answers
		return near, nil
	}
	_, _, err := streamsOver(dial, 2, 1<<10)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("streams over a stalled chain: %v, want a deadline exceeded", err)
	}
	for i, f := range far {
		if _, err := f.Write([]byte{0}); !errors.Is(err, io.ErrClosedPipe) {
			t.Errorf("connection %d: a write from the far end gave %v; want io.ErrClosedPipe (closed)", i, err)
		}
	}
}

// setupsUntil sets up a connection each tick until stopped, and counts
// the ones that fail.
func TestSetupsUntil(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	for _, tc := range []struct {
		target string
		ok     bool
	}{{ln.Addr().String(), true}, {closedAddr, false}} {
		stop := make(chan struct{})
		time.AfterFunc(3*loadedEvery+loadedEvery/2, func() { close(stop) })
		errs := 0
		took := setupsUntil(&topology{kind: "d", target: tc.target}, stop, &errs)
		if tc.ok && (len(took) == 0 || errs != 0) {
			t.Errorf("to an echo server: %d setups, %d failed; want some, none failed", len(took), errs)
		}
		if !tc.ok && (len(took) != 0 || errs == 0) {
			t.Errorf("to a closed port: %d setups, %d failed; want none, some failed", len(took), errs)
		}
	}
}

// closedAddr is a loopback address where nothing listens: port 1, outside
// the ephemeral range, which no listener on port 0 (such as a one-use shim
// of a test in another process) is ever handed.
const closedAddr = "127.0.0.1:1"
