package main

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair is both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, _ := ln.AcceptTCP()
		accepted <- c
	}()
	client, err = net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	server.SetDeadline(time.Now().Add(10 * time.Second))
	return client, server
}

// A download request, even in pieces, gets its bytes and the sink's end;
// anything else comes back as it went, for the echo to go on.
func TestServeDownload(t *testing.T) {
	t.Run("request in pieces", func(t *testing.T) {
		c, s := tcpPair(t)
		req := downloadRequest(300 << 10)
		done := make(chan bool, 1)
		go func() { sent, _ := serveDownload(s); done <- sent }()
		for _, piece := range [][]byte{req[:1], req[1:9], req[9:]} {
			if _, err := c.Write(piece); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		got, err := io.ReadAll(c) // to the sink's CloseWrite
		if err != nil || len(got) != 300<<10 {
			t.Fatalf("read %d bytes, %v; want %d and the end", len(got), err, 300<<10)
		}
		c.Close()
		if !<-done {
			t.Error("serveDownload did not say it served the download")
		}
	})
	for _, first := range [][]byte{{'x'}, make([]byte, 64), []byte("\xffPTBD-not-it....")} {
		c, s := tcpPair(t)
		done := make(chan bool, 1)
		go func() { sent, _ := serveDownload(s); done <- sent }()
		if _, err := c.Write(first); err != nil {
			t.Fatal(err)
		}
		back := make([]byte, len(first))
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(back, first) {
			t.Errorf("first bytes %q came back as %q, %v", first, back, err)
		}
		if <-done {
			t.Errorf("first bytes %q were taken for a download request", first)
		}
	}
}
