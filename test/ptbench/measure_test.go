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
