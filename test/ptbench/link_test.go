package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// The emulated link carries bytes exactly and in order, half-closes as
// its ends do, and holds them at least as long as it says: the first
// flight a TCP handshake's round trip and a one-way delay after the
// connect, every later byte a one-way delay each way. (Lower bounds only:
// a sleep never returns early, a loaded machine only makes it later.)
func TestDelayLink(t *testing.T) {
	before := runtime.NumGoroutine()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	const oneWay = 20 * time.Millisecond
	l, err := startDelayLink(echo.Addr().String(), linkShape{oneWay: oneWay})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	var b [1]byte
	c.Write([]byte{'x'})
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'x' {
		t.Fatalf("first byte back: %q, %v", b, err)
	}
	if d := time.Since(start); d < 4*oneWay {
		t.Errorf("first byte back after %v, want at least a handshake's round trip and one each way (%v)", d, 4*oneWay)
	}
	start = time.Now()
	c.Write([]byte{'y'})
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'y' {
		t.Fatalf("second byte back: %q, %v", b, err)
	}
	if d := time.Since(start); d < 2*oneWay {
		t.Errorf("a round trip on the open connection took %v, want at least %v", d, 2*oneWay)
	}
	data := make([]byte, 4<<20)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("4 MiB through the link: %d bytes back (%v), equal: %v", len(got), err, bytes.Equal(got, data))
	}
	c.Close()
	l.Close()
	echo.Close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after the link closed, %d before", n, before)
	}
}
