package shim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
	"golang.org/x/net/proxy"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// listenLoopback opens a loopback listener that the test closes at its end.
func listenLoopback(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func TestReadRequestFromXNetProxy(t *testing.T) {
	tests := []struct {
		name   string
		auth   *proxy.Auth
		target string
		want   Request
	}{
		{"IPv4", nil, "192.0.2.7:80", Request{Target: "192.0.2.7:80", Args: pt.Args{}}},
		{"IPv6", nil, "[2001:db8::7]:443", Request{Target: "[2001:db8::7]:443", Args: pt.Args{}}},
		{"host name", nil, "bridge.example:8080", Request{Target: "bridge.example:8080", Args: pt.Args{}}},
		{"args in username, NUL password", &proxy.Auth{User: "a=1;b=2", Password: "\x00"}, "192.0.2.7:1",
			Request{Target: "192.0.2.7:1", Username: "a=1;b=2", Args: pt.Args{"a": {"1"}, "b": {"2"}}}},
		{"args split", &proxy.Auth{User: "cert=ab", Password: "c;iat-mode=1"}, "192.0.2.7:2",
			Request{Target: "192.0.2.7:2", Username: "cert=ab", Password: "c;iat-mode=1",
				Args: pt.Args{"cert": {"abc"}, "iat-mode": {"1"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listenLoopback(t)
			dialer, err := proxy.SOCKS5("tcp", ln.Addr().String(), tt.auth, proxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			clientErr := make(chan error, 1)
			go func() {
				c, err := dialer.Dial("tcp", tt.target)
				if err != nil {
					clientErr <- err
					return
				}
				defer c.Close()
				c.Write([]byte("ping"))
				b, err := io.ReadAll(c)
				if err == nil && string(b) != "pong" {
					err = errors.New("read " + string(b))
				}
				clientErr <- err
			}()
			conn, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			req, err := ReadRequest(conn, 5*time.Second)
			if err != nil {
				t.Fatalf("ReadRequest: %v", err)
			}
			if !reflect.DeepEqual(*req, tt.want) {
				t.Errorf("got %+v, want %+v", *req, tt.want)
			}
			if err := Grant(conn); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 4)
			if _, err := io.ReadFull(conn, b); err != nil || string(b) != "ping" {
				t.Errorf("after grant read %q, %v", b, err)
			}
			conn.Write([]byte("pong"))
			conn.Close()
			if err := <-clientErr; err != nil {
				t.Errorf("client: %v", err)
			}
		})
	}
}

// TestOwnRoundTrip: our client's arguments, split as tor splits them, come
// out of our server unchanged; a Reject comes back as a *ReplyError.
func TestOwnRoundTrip(t *testing.T) {
	args := pt.Args{"cert": {strings.Repeat(`c;=\`, 60)}, "iat-mode": {"2"}}
	tests := []struct {
		name string
		args pt.Args
		code byte
	}{
		{"no args, granted", nil, RepSucceeded},
		{"long escaped args, granted", args, RepSucceeded},
		{"refused", args, RepConnectionRefused},
		{"TTL expired", nil, RepTTLExpired},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listenLoopback(t)
			enc := ""
			if tt.args != nil {
				enc = metadata.EncodeClientArgs(tt.args)
			}
			user, pass, err := metadata.SOCKS5Credentials(enc)
			if err != nil {
				t.Fatal(err)
			}
			clientErr := make(chan error, 1)
			go func() {
				c, err := DialSOCKS5(context.Background(), ln.Addr().String(), "[::1]:9", user, pass)
				if err == nil {
					c.Close()
				}
				clientErr <- err
			}()
			conn, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			req, err := ReadRequest(conn, 5*time.Second)
			if err != nil {
				t.Fatalf("ReadRequest: %v", err)
			}
			if req.Target != "[::1]:9" || req.Username+req.Password != enc {
				t.Errorf("got %+v, want target [::1]:9 and credentials %q", *req, enc)
			}
			if len(tt.args) > 0 && !reflect.DeepEqual(req.Args, tt.args) {
				t.Errorf("args %v, want %v", req.Args, tt.args)
			}
			if tt.code == RepSucceeded {
				err = Grant(conn)
			} else {
				err = Reject(conn, tt.code)
			}
			if err != nil {
				t.Fatal(err)
			}
			err = <-clientErr
			var re *ReplyError
			switch {
			case tt.code == RepSucceeded && err != nil:
				t.Fatalf("client: %v", err)
			case tt.code != RepSucceeded && (!errors.As(err, &re) || re.Code != tt.code || ReplyCodeFor(err) != tt.code):
				t.Fatalf("client: %v, want *ReplyError{0x%02x}", err, tt.code)
			}
		})
	}
}

func TestReadRequestWire(t *testing.T) {
	connect4 := []byte{5, 1, 0, 1, 192, 0, 2, 1, 0, 80}
	rep := func(code byte) []byte { return []byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0} }
	tests := []struct {
		name      string
		in        []byte
		wantErr   error // nil: success
		wantReq   *Request
		wantReply []byte // every byte ReadRequest sends
		wantLeft  []byte // bytes left unread in the connection
	}{
		{"IPv4, no auth", cat([]byte{5, 1, 0}, connect4), nil,
			&Request{Target: "192.0.2.1:80", Args: pt.Args{}}, []byte{5, 0}, nil},
		{"IPv6, pipelined data stays", cat([]byte{5, 1, 0, 5, 1, 0, 4}, net.ParseIP("2001:db8::9"), []byte{1, 0}, []byte("early")), nil,
			&Request{Target: "[2001:db8::9]:256", Args: pt.Args{}}, []byte{5, 0}, []byte("early")},
		{"domain", cat([]byte{5, 1, 0, 5, 1, 0, 3, 3}, []byte("a.b"), []byte{0, 1}), nil,
			&Request{Target: "a.b:1", Args: pt.Args{}}, []byte{5, 0}, nil},
		{"0x02 preferred over 0x00", cat([]byte{5, 2, 0, 2, 1, 3}, []byte("k=v"), []byte{1, 0}, connect4), nil,
			&Request{Target: "192.0.2.1:80", Username: "k=v", Args: pt.Args{"k": {"v"}}}, []byte{5, 2, 1, 0}, nil},
		{"escaped args", cat([]byte{5, 1, 2, 1, 4}, []byte(`a=\;`), []byte{3}, []byte(`;b=`), connect4), nil,
			&Request{Target: "192.0.2.1:80", Username: `a=\;`, Password: ";b=", Args: pt.Args{"a": {";"}, "b": {""}}},
			[]byte{5, 2, 1, 0}, nil},

		{"bad version", []byte{4, 1, 0, 80, 192, 0, 2, 1, 0}, ErrMalformed, nil, nil, []byte{0, 80, 192, 0, 2, 1, 0}},
		{"no methods", []byte{5, 0}, ErrNoAcceptableMethods, nil, []byte{5, 0xff}, nil},
		{"only GSSAPI", []byte{5, 1, 1}, ErrNoAcceptableMethods, nil, []byte{5, 0xff}, nil},
		{"unsupported command", cat([]byte{5, 1, 0}, []byte{5, 2, 0, 1, 127, 0, 0, 1, 0, 80}),
			ErrCommandNotSupported, nil, cat([]byte{5, 0}, rep(RepCommandNotSupported)), []byte{127, 0, 0, 1, 0, 80}},
		{"bad address type", cat([]byte{5, 1, 0}, []byte{5, 1, 0, 2, 127, 0, 0, 1, 0, 80}),
			ErrAddressNotSupported, nil, cat([]byte{5, 0}, rep(RepAddressNotSupported)), []byte{127, 0, 0, 1, 0, 80}},
		{"request version", cat([]byte{5, 1, 0}, []byte{4, 1, 0, 1}), ErrMalformed, nil,
			cat([]byte{5, 0}, rep(RepGeneralFailure)), nil},
		{"reserved byte", cat([]byte{5, 1, 0}, []byte{5, 1, 7, 1}), ErrMalformed, nil,
			cat([]byte{5, 0}, rep(RepGeneralFailure)), nil},
		{"empty domain", cat([]byte{5, 1, 0}, []byte{5, 1, 0, 3, 0, 0, 80}), ErrMalformed, nil,
			cat([]byte{5, 0}, rep(RepGeneralFailure)), []byte{0, 80}},
		{"domain with a bracket", cat([]byte{5, 1, 0}, []byte{5, 1, 0, 3, 3, '0', '[', '2', 0, 80}), ErrMalformed, nil,
			cat([]byte{5, 0}, rep(RepGeneralFailure)), []byte{0, 80}},
		{"domain with a colon", cat([]byte{5, 1, 0}, []byte{5, 1, 0, 3, 3, ':', ':', '1', 0, 80}), ErrMalformed, nil,
			cat([]byte{5, 0}, rep(RepGeneralFailure)), []byte{0, 80}},
		{"zero ULEN", []byte{5, 1, 2, 1, 0, 1, 'x'}, ErrAuthFailed, nil, []byte{5, 2, 1, 1}, []byte{1, 'x'}},
		{"auth version", []byte{5, 1, 2, 5, 1, 'k', 1, 0}, ErrAuthFailed, nil, []byte{5, 2, 1, 1}, []byte{'k', 1, 0}},
		{"bad args", []byte{5, 1, 2, 1, 3, 'a', 'b', 'c', 1, 0}, ErrAuthFailed, nil, []byte{5, 2, 1, 1}, nil},
		{"trailing escape in args", []byte{5, 1, 2, 1, 3, 'a', '=', '\\', 1, 0}, ErrAuthFailed, nil, []byte{5, 2, 1, 1}, nil},
		{"truncated methods", []byte{5, 2, 0}, io.ErrUnexpectedEOF, nil, nil, nil},
		{"truncated IPv4", []byte{5, 1, 0, 5, 1, 0, 1, 127, 0}, io.ErrUnexpectedEOF, nil, []byte{5, 0}, nil},
		{"truncated IPv6", []byte{5, 1, 0, 5, 1, 0, 4, 0, 0}, io.ErrUnexpectedEOF, nil, []byte{5, 0}, nil},
		{"truncated domain", []byte{5, 1, 0, 5, 1, 0, 3, 9, 'a'}, io.ErrUnexpectedEOF, nil, []byte{5, 0}, nil},
		{"truncated port", []byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0}, io.ErrUnexpectedEOF, nil, []byte{5, 0}, nil},
		{"truncated password", []byte{5, 1, 2, 1, 1, 'k', 4, 'a'}, io.ErrUnexpectedEOF, nil, []byte{5, 2}, nil},
		{"empty", nil, io.EOF, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, srv := tcpPair(t)
			if _, err := client.Write(tt.in); err != nil {
				t.Fatal(err)
			}
			client.CloseWrite()
			req, err := ReadRequest(srv, 5*time.Second)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ReadRequest: %v", err)
				}
				if !reflect.DeepEqual(req, tt.wantReq) {
					t.Errorf("got %+v, want %+v", *req, *tt.wantReq)
				}
			} else if !errors.Is(err, tt.wantErr) || req != nil {
				t.Errorf("got %v, %v; want %v", req, err, tt.wantErr)
			}
			left, err := io.ReadAll(srv)
			if err != nil || !bytes.Equal(left, tt.wantLeft) {
				t.Errorf("left unread: % x, %v; want % x", left, err, tt.wantLeft)
			}
			srv.Close()
			reply, err := io.ReadAll(client)
			if err != nil || !bytes.Equal(reply, tt.wantReply) {
				t.Errorf("replied % x, %v; want % x", reply, err, tt.wantReply)
			}
		})
	}
}

func TestReadRequestTimeout(t *testing.T) {
	client, srv := tcpPair(t)
	client.Write([]byte{5, 1})
	_, err := ReadRequest(srv, 50*time.Millisecond)
	if err == nil || ReplyCodeFor(err) != RepTTLExpired {
		t.Fatalf("got %v (reply 0x%02x), want a timeout", err, ReplyCodeFor(err))
	}
	// The deadline was cleared: a later read waits for data.
	client.Write([]byte{7})
	var b [1]byte
	if _, err := io.ReadFull(srv, b[:]); err != nil || b[0] != 7 {
		t.Fatalf("read after ReadRequest: %v, %v", b, err)
	}
}

func TestGrantReject(t *testing.T) {
	tests := []struct {
		name    string
		do      func(net.Conn) error
		want    []byte
		wantErr bool
	}{
		{"grant", Grant, []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{"reject 0x07", func(c net.Conn) error { return Reject(c, RepCommandNotSupported) }, []byte{5, 7, 0, 1, 0, 0, 0, 0, 0, 0}, false},
		{"reject 0x00 is refused", func(c net.Conn) error { return Reject(c, RepSucceeded) }, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, srv := tcpPair(t)
			if err := tt.do(srv); (err != nil) != tt.wantErr {
				t.Fatalf("err %v, want error %v", err, tt.wantErr)
			}
			srv.Close()
			got, err := io.ReadAll(client)
			if err != nil || !bytes.Equal(got, tt.want) {
				t.Fatalf("wrote % x, %v; want % x", got, err, tt.want)
			}
		})
	}
}

func TestReplyCodeFor(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", errno)}
	}
	tests := []struct {
		name string
		err  error
		want byte
	}{
		{"nil", nil, RepSucceeded},
		{"reply error", &ReplyError{Code: RepHostUnreachable}, RepHostUnreachable},
		{"wrapped reply error", errors.Join(context.DeadlineExceeded, &ReplyError{Code: RepNotAllowed}), RepNotAllowed},
		{"zero reply error", &ReplyError{}, RepGeneralFailure},
		{"refused", opErr(syscall.ECONNREFUSED), RepConnectionRefused},
		{"network unreachable", opErr(syscall.ENETUNREACH), RepNetworkUnreachable},
		{"host unreachable", opErr(syscall.EHOSTUNREACH), RepHostUnreachable},
		{"context deadline", context.DeadlineExceeded, RepTTLExpired},
		{"i/o deadline", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, RepTTLExpired},
		{"ETIMEDOUT", opErr(syscall.ETIMEDOUT), RepTTLExpired},
		{"cancelled", context.Canceled, RepGeneralFailure},
		{"other", errors.New("boom"), RepGeneralFailure},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ReplyCodeFor(tt.err); got != tt.want {
				t.Errorf("ReplyCodeFor(%v) = 0x%02x, want 0x%02x", tt.err, got, tt.want)
			}
		})
	}
}

func TestReplyErrorText(t *testing.T) {
	for code, want := range map[byte]string{
		RepConnectionRefused:   "connection refused (0x05)",
		RepTTLExpired:          "TTL expired (0x06)",
		RepGeneralFailure:      "general SOCKS server failure (0x01)",
		RepAddressNotSupported: "address type not supported (0x08)",
		0x42:                   "unassigned SOCKS5 reply code (0x42)",
	} {
		if got := (&ReplyError{Code: code}).Error(); got != want {
			t.Errorf("ReplyError{0x%02x} = %q, want %q", code, got, want)
		}
	}
}
