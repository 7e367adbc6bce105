package shim

import (
	"bytes"
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// FuzzReadRequest feeds arbitrary client bytes to ReadRequest over a
// net.Pipe: it must never panic nor hang, and whatever it accepts must be a
// well-formed target.
func FuzzReadRequest(f *testing.F) {
	for _, seed := range [][]byte{
		{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80},
		cat([]byte{5, 1, 0, 5, 1, 0, 4}, net.ParseIP("::1"), []byte{1, 187}),
		cat([]byte{5, 1, 0, 5, 1, 0, 3, 3}, []byte("a.b"), []byte{0, 1}),
		cat([]byte{5, 2, 0, 2, 1, 3}, []byte("k=v"), []byte{1, 0}, []byte{5, 1, 0, 1, 1, 2, 3, 4, 0, 1}),
		cat([]byte{5, 1, 2, 1, 4}, []byte(`a=\;`), []byte{3}, []byte(`;b=`), []byte{5, 1, 0, 3, 1, ':', 0, 0}),
		{5, 0},
		{4, 1, 0, 80, 1, 2, 3, 4, 0},
		{5, 1, 0, 5, 2, 0, 1},
		{5, 1, 0, 5, 1, 0, 9},
		{5, 1, 2, 1, 0},
		{5, 1, 2, 1, 3, 'a', 'b', 'c', 1, 0},
		{5, 255},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		client, srv := net.Pipe()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // the client's bytes, then EOF
			defer wg.Done()
			client.Write(in)
			client.Close()
		}()
		go func() { // the client reads every reply
			defer wg.Done()
			io.Copy(io.Discard, client)
		}()
		req, err := ReadRequest(srv, 200*time.Millisecond)
		srv.Close()
		wg.Wait()
		if err != nil {
			if req != nil {
				t.Fatalf("request %+v with error %v", req, err)
			}
			return
		}
		host, port, serr := net.SplitHostPort(req.Target)
		if serr != nil || host == "" {
			t.Fatalf("accepted target %q: %v", req.Target, serr)
		}
		if _, perr := strconv.ParseUint(port, 10, 16); perr != nil {
			t.Fatalf("accepted target %q: port %v", req.Target, perr)
		}
		if req.Args == nil {
			t.Fatalf("nil Args for %q", in)
		}
	})
}

// FuzzHandshakeReply feeds arbitrary server replies to Handshake: it must
// never panic nor hang, and succeed only on a well-formed grant.
func FuzzHandshakeReply(f *testing.F) {
	ok := []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, seed := range []struct {
		reply []byte
		auth  bool
	}{
		{cat([]byte{5, 0}, ok), false},
		{cat([]byte{5, 2, 1, 0}, ok), true},
		{cat([]byte{5, 0}, []byte{5, 0, 0, 4}, make([]byte, 18)), false},
		{[]byte{5, 0, 5, 0, 0, 3, 3, 'a', 'b', 'c', 0, 1, 'x'}, false},
		{[]byte{5, 0xff}, true},
		{[]byte{5, 2, 1, 1}, true},
		{[]byte{5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{[]byte{5, 0, 5, 0, 0, 9}, false},
		{[]byte{5, 0, 5, 0, 0, 3, 255}, false},
		{nil, false},
	} {
		f.Add(seed.reply, seed.auth)
	}
	f.Fuzz(func(t *testing.T, reply []byte, auth bool) {
		client, srv := net.Pipe()
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { // the server's bytes, then EOF
			defer wg.Done()
			srv.Write(reply)
			srv.Close()
		}()
		go func() { // the server reads every request
			defer wg.Done()
			io.Copy(io.Discard, srv)
		}()
		var user, pass []byte
		if auth {
			user, pass = []byte("k=v"), []byte{0}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := Handshake(ctx, client, "192.0.2.1:80", user, pass)
		cancel()
		client.Close()
		wg.Wait()
		if err != nil {
			return
		}
		prefix := []byte{5, 0, 5, 0, 0}
		if auth {
			prefix = []byte{5, 2, 1, 0, 5, 0, 0}
		}
		if !bytes.HasPrefix(reply, prefix) {
			t.Fatalf("Handshake accepted reply % x", reply)
		}
	})
}
