package shim

import (
	"bytes"
	"context"
	"io"
	"net"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

// A password of length 0 (PLEN = 0, curl's --proxy-user ARGS:) means none,
// as tor's single NUL does: the username alone carries the arguments.
func TestReadRequestEmptyPassword(t *testing.T) {
	connect := []byte{5, 1, 0, 1, 192, 0, 2, 1, 0, 80}
	for _, tc := range []struct {
		name string
		pass []byte
	}{
		{"PLEN 0, as curl sends", nil},
		{"a NUL, as tor sends", []byte{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, srv := tcpPair(t)
			in := cat([]byte{5, 2, 0, 2, 1, 3}, []byte("k=v"), []byte{byte(len(tc.pass))}, tc.pass, connect)
			if _, err := client.Write(in); err != nil {
				t.Fatal(err)
			}
			req, err := ReadRequest(srv, 5*time.Second)
			if err != nil {
				t.Fatalf("ReadRequest: %v", err)
			}
			want := &Request{Target: "192.0.2.1:80", Username: "k=v", Args: pt.Args{"k": {"v"}}}
			if !reflect.DeepEqual(req, want) {
				t.Errorf("got %+v, want %+v", *req, *want)
			}
			srv.Close()
			reply, _ := io.ReadAll(client)
			if !bytes.Equal(reply, []byte{5, 2, 1, 0}) {
				t.Errorf("replied % x, want method 0x02 and authentication success", reply)
			}
		})
	}
}

// Real curl, as an application uses a standalone --listen port: the bridge
// as the SOCKS host name, the chain's arguments as the username with an
// empty password, and, beyond 255 bytes, the rest as the password.
func TestReadRequestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skipf("curl is not installed (apt-get install -y curl): %v", err)
	}
	long := "0.key=" + strings.Repeat("x", 300)
	for _, tc := range []struct {
		name, proxyUser string
		want            pt.Args
	}{
		{"username only", "1.cert=AbC+/09;1.iat-mode=0:", pt.Args{"1.cert": {"AbC+/09"}, "1.iat-mode": {"0"}}},
		{"split at 255 bytes", long[:255] + ":" + long[255:], pt.Args{"0.key": {strings.Repeat("x", 300)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan *Request, 1)
			go func() {
				defer close(got)
				conn, err := ln.AcceptTCP()
				if err != nil {
					return
				}
				defer conn.Close()
				req, err := ReadRequest(conn, 10*time.Second)
				if err != nil {
					t.Errorf("ReadRequest from curl: %v", err)
					return
				}
				got <- req
				Grant(conn)
				io.WriteString(conn, "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, curl, "-sS", "--max-time", "20",
				"--socks5-hostname", ln.Addr().String(), "--proxy-user", tc.proxyUser, "http://bridge.example:8443/")
			cmd.Env = []string{"PATH=/usr/bin:/bin"} // no proxy variables of the machine
			out, err := cmd.CombinedOutput()
			if err != nil || string(out) != "hello" {
				t.Errorf("curl: %v, %q", err, out)
			}
			req := <-got
			if req == nil {
				t.Fatal("no request read")
			}
			if req.Target != "bridge.example:8443" || !reflect.DeepEqual(req.Args, tc.want) {
				t.Errorf("request: target %q, args %v; want bridge.example:8443, %v", req.Target, req.Args, tc.want)
			}
		})
	}
}
