package extorport

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// fakeServer accepts one connection on a fresh loopback listener and runs
// serve on it; the returned channel yields serve's error once the connection
// is closed.
func fakeServer(t *testing.T, serve func(c *net.TCPConn) error) (addr string, done <-chan error) {
	t.Helper()
	ln := listen(t)
	ch := make(chan error, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			ch <- err
			return
		}
		defer c.Close()
		ch <- serve(c)
	}()
	return ln.Addr().String(), ch
}

// TestClientServerRoundTrip runs Dial against ServerHandshake.
func TestClientServerRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		name    string
		meta    Meta
		deny    bool
		wantErr error
	}{
		{name: "full", meta: Meta{UserAddr: "1.2.3.4:5678", Transport: "obfs4_bridge"}},
		{name: "ipv6", meta: Meta{UserAddr: "[2001:db8::7]:65535", Transport: "alias"}},
		{name: "no metadata", meta: Meta{}},
		{name: "denied", meta: Meta{UserAddr: "1.2.3.4:5678"}, deny: true, wantErr: ErrDenied},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path, cookie := cookieFile(t)
			var got Meta
			addr, done := fakeServer(t, func(c *net.TCPConn) error {
				var err error
				if got, err = ServerHandshake(c, ServerConfig{Cookie: cookie}); err != nil {
					return err
				}
				if tt.deny {
					return Deny(c)
				}
				if err := Okay(c); err != nil {
					return err
				}
				_, err = io.Copy(c, c) // echo until the client half-closes
				return err
			})
			conn, err := Dial(context.Background(), addr, ClientConfig{CookiePath: path}, tt.meta)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Dial error = %v, want %v", err, tt.wantErr)
				}
				if conn != nil {
					t.Errorf("Dial returned a conn with an error")
				}
			} else {
				if err != nil {
					t.Fatalf("Dial: %v", err)
				}
				conn.Write([]byte("ping"))
				conn.CloseWrite()
				echo, err := io.ReadAll(conn)
				conn.Close()
				if err != nil || string(echo) != "ping" {
					t.Errorf("echo = %q, %v; want \"ping\"", echo, err)
				}
			}
			if err := <-done; err != nil {
				t.Fatalf("server: %v", err)
			}
			if got != tt.meta {
				t.Errorf("server saw %+v, want %+v", got, tt.meta)
			}
		})
	}
}

// TestClientWaitsForOkay: a server that answers DONE late, and first with
// frames the client must ignore, sees no byte from the client before OKAY.
func TestClientWaitsForOkay(t *testing.T) {
	path, cookie := cookieFile(t)
	dialed := make(chan struct{})
	addr, done := fakeServer(t, func(c *net.TCPConn) error {
		if err := serverAuth(c, cookie); err != nil {
			return err
		}
		meta, err := serverReadMeta(c, DefaultMaxFrames)
		if err != nil {
			return err
		}
		if want := (Meta{UserAddr: "5.6.7.8:9", Transport: "a"}); meta != want {
			return errors.New("wrong meta")
		}
		// After DONE, nothing may arrive while we hold OKAY back.
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return errors.New("client sent a byte before OKAY")
		}
		select {
		case <-dialed:
			return errors.New("Dial returned before OKAY")
		default:
		}
		c.SetReadDeadline(time.Time{})
		for _, f := range [][]byte{frame(CmdControl, "x"), frame(0x7777, "yy"), frame(CmdOkay, "")} {
			if _, err := c.Write(f); err != nil {
				return err
			}
		}
		// The first byte after DONE is the client's data.
		got, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if string(got) != "data" {
			return errors.New("after OKAY got " + string(got))
		}
		return nil
	})
	conn, err := Dial(context.Background(), addr, ClientConfig{CookiePath: path}, Meta{UserAddr: "5.6.7.8:9", Transport: "a"})
	close(dialed)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	conn.Write([]byte("data"))
	conn.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestClientHandshakeFailures drives ClientHandshake against misbehaving
// hand-made servers. Each server records every byte the client sent after
// the point where the client must stop.
func TestClientHandshakeFailures(t *testing.T) {
	path, cookie := cookieFile(t)
	readAll := func(c *net.TCPConn) error {
		b, err := io.ReadAll(c)
		if len(b) != 0 {
			return errors.New("client sent " + string(b))
		}
		return err
	}
	afterAuth := func(then func(c *net.TCPConn) error) func(c *net.TCPConn) error {
		return func(c *net.TCPConn) error {
			if err := serverAuth(c, cookie); err != nil {
				return err
			}
			if _, err := serverReadMeta(c, DefaultMaxFrames); err != nil {
				return err
			}
			return then(c)
		}
	}
	tests := []struct {
		name    string
		cfg     ClientConfig
		meta    Meta
		serve   func(c *net.TCPConn) error
		wantErr error
	}{
		// The client sends its AuthType and ClientNonce without waiting for
		// the AuthTypes, and nothing more.
		{name: "no SAFE_COOKIE offered", serve: func(c *net.TCPConn) error {
			c.Write([]byte{2, 3, 0})
			io.ReadFull(c, make([]byte, 1+nonceLen))
			return readAll(c)
		}, wantErr: ErrUnsupportedAuth},
		{name: "no end of auth types", serve: func(c *net.TCPConn) error {
			c.Write(bytes.Repeat([]byte{1}, 300))
			io.ReadFull(c, make([]byte, 1+nonceLen))
			return readAll(c)
		}},
		{name: "wrong server hash", serve: func(c *net.TCPConn) error {
			c.Write([]byte{1, 0})
			io.ReadFull(c, make([]byte, 1+nonceLen))
			junk := make([]byte, hashLen+nonceLen)
			rand.Read(junk)
			c.Write(junk)
			return readAll(c)
		}, wantErr: ErrAuthFailed},
		{name: "wrong cookie file", cfg: ClientConfig{CookiePath: filepath.Join(t.TempDir(), "other")}, serve: func(c *net.TCPConn) error {
			serverAuth(c, cookie)
			return nil
		}, wantErr: ErrAuthFailed},
		{name: "auth status 0", serve: func(c *net.TCPConn) error {
			c.Write([]byte{1, 0})
			msg := make([]byte, 1+nonceLen)
			io.ReadFull(c, msg)
			nonce := make([]byte, nonceLen)
			c.Write(append(authHash(cookie, serverHashContext, msg[1:], nonce), nonce...))
			io.ReadFull(c, make([]byte, hashLen))
			// The metadata comes with the ClientHash, not after the AuthStatus.
			if _, err := serverReadMeta(c, DefaultMaxFrames); err != nil {
				return err
			}
			c.Write([]byte{0})
			return readAll(c)
		}, wantErr: ErrAuthFailed},
		{name: "deny", serve: afterAuth(func(c *net.TCPConn) error {
			Deny(c)
			return readAll(c)
		}), wantErr: ErrDenied},
		{name: "endless unknown frames", serve: afterAuth(func(c *net.TCPConn) error {
			c.Write(bytes.Repeat(frame(CmdControl, ""), maxReplyFrames+1))
			return readAll(c)
		}), wantErr: ErrTooManyFrames},
		{name: "EOF instead of OKAY", serve: afterAuth(func(c *net.TCPConn) error {
			return nil
		}), wantErr: io.EOF},
		{name: "truncated OKAY", serve: afterAuth(func(c *net.TCPConn) error {
			c.Write([]byte{0x10, 0})
			return nil
		}), wantErr: io.ErrUnexpectedEOF},
		{name: "stalled server", cfg: ClientConfig{Timeout: 100 * time.Millisecond}, serve: afterAuth(func(c *net.TCPConn) error {
			return readAll(c)
		}), wantErr: os.ErrDeadlineExceeded},
		{name: "bad TRANSPORT refused before sending", meta: Meta{Transport: "a|b"}, serve: readAll, wantErr: ErrBadTransport},
		{name: "bad USERADDR refused before sending", meta: Meta{UserAddr: "1.2.3.4"}, serve: readAll, wantErr: ErrBadUserAddr},
		{name: "missing cookie file", cfg: ClientConfig{CookiePath: filepath.Join(t.TempDir(), "none")}, serve: readAll, wantErr: os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if cfg.CookiePath == "" {
				cfg.CookiePath = path
			} else if tt.wantErr == ErrAuthFailed {
				if _, err := WriteCookieFile(cfg.CookiePath); err != nil {
					t.Fatal(err)
				}
			}
			addr, done := fakeServer(t, tt.serve)
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			err = ClientHandshake(conn, cfg, tt.meta)
			conn.Close()
			if err == nil {
				t.Fatalf("ClientHandshake succeeded")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			// A client closing with our bytes unread resets the connection.
			if serr := <-done; serr != nil && !errors.Is(serr, io.EOF) && !errors.Is(serr, syscall.ECONNRESET) {
				t.Errorf("server: %v", serr)
			}
		})
	}
}

// TestDialCancel: cancelling the context aborts a handshake stuck on a
// silent server, though its own timeout is far away.
func TestDialCancel(t *testing.T) {
	path, _ := cookieFile(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, done := fakeServer(t, func(c *net.TCPConn) error {
		cancel()
		_, err := io.ReadAll(c)
		return err
	})
	conn, err := Dial(ctx, addr, ClientConfig{CookiePath: path, Timeout: time.Hour}, Meta{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Dial error = %v, want context.Canceled", err)
	}
	if conn != nil {
		conn.Close()
	}
	if err := <-done; err != nil {
		t.Errorf("server: %v", err)
	}
}
