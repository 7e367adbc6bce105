package extorport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

// TestGoptlibDialOr runs ServerHandshake against goptlib's own ExtORPort
// client, the one every server PT child uses.
func TestGoptlibDialOr(t *testing.T) {
	tests := []struct {
		name     string
		userAddr string
		method   string
		okay     bool
	}{
		{"ipv4 okay", "1.2.3.4:5678", "obfs4", true},
		{"ipv6 okay", "[2001:db8::1]:443", "obfs4", true},
		{"ipv6 mapped okay", "[::ffff:1.2.3.4]:9", "webtunnel", true},
		{"deny", "1.2.3.4:5678", "obfs4", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, cookie := cookieFile(t)
			ln := listen(t)
			type result struct {
				meta Meta
				err  error
				echo error
			}
			done := make(chan result, 1)
			go func() {
				var r result
				defer func() { done <- r }()
				c, err := ln.Accept()
				if err != nil {
					r.err = err
					return
				}
				defer c.Close()
				r.meta, r.err = ServerHandshake(c, ServerConfig{Cookie: cookie})
				if r.err != nil {
					return
				}
				if !tt.okay {
					r.echo = Deny(c)
					return
				}
				if r.echo = Okay(c); r.echo != nil {
					return
				}
				buf := make([]byte, 5)
				if _, r.echo = io.ReadFull(c, buf); r.echo == nil {
					_, r.echo = c.Write(buf)
				}
			}()

			addr := ln.Addr().(*net.TCPAddr)
			conn, err := pt.DialOr(&pt.ServerInfo{ExtendedOrAddr: addr, AuthCookiePath: path, OrAddr: addr}, tt.userAddr, tt.method)
			if tt.okay {
				if err != nil {
					t.Fatalf("DialOr: %v", err)
				}
				if _, err := conn.Write([]byte("hello")); err != nil {
					t.Errorf("write: %v", err)
				}
				got := make([]byte, 5)
				if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, []byte("hello")) {
					t.Errorf("echo = %q, %v; want \"hello\"", got, err)
				}
				conn.Close()
			} else if err == nil {
				conn.Close()
				t.Errorf("DialOr succeeded after DENY")
			}
			r := <-done
			if r.err != nil || r.echo != nil {
				t.Fatalf("server: %v / %v", r.err, r.echo)
			}
			if want := (Meta{UserAddr: tt.userAddr, Transport: tt.method}); r.meta != want {
				t.Errorf("meta = %+v, want %+v", r.meta, want)
			}
		})
	}
}

// TestGoptlibWrongCookie: a goptlib client whose cookie file holds another
// cookie refuses our server hash and hangs up; the server sees the EOF.
func TestGoptlibWrongCookie(t *testing.T) {
	path, _ := cookieFile(t)
	_, serverCookie := cookieFile(t)
	ln := listen(t)
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = ServerHandshake(c, ServerConfig{Cookie: serverCookie})
		done <- err
	}()
	addr := ln.Addr().(*net.TCPAddr)
	conn, err := pt.DialOr(&pt.ServerInfo{ExtendedOrAddr: addr, AuthCookiePath: path, OrAddr: addr}, "1.2.3.4:5678", "obfs4")
	if err == nil {
		conn.Close()
		t.Errorf("DialOr succeeded with a wrong cookie")
	}
	if err := <-done; !errors.Is(err, io.EOF) {
		t.Errorf("server error = %v, want EOF", err)
	}
}
