package shim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// goptlibServer runs goptlib's own SOCKS server, the peer a child PT
// presents, and hands each request it read to respond.
func goptlibServer(t *testing.T, respond func(c *pt.SocksConn)) (addr string, reqs <-chan pt.SocksRequest) {
	t.Helper()
	ln, err := pt.ListenSocks("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan pt.SocksRequest, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptSocks()
			if err != nil {
				return // the listener was closed
			}
			ch <- c.Req
			respond(c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), ch
}

func TestHandshakeWithGoptlib(t *testing.T) {
	long := "cert=" + strings.Repeat("x", 395)
	// An escape that straddles tor's 255-byte split: '\' is byte 254 and
	// the ';' it escapes is byte 255, the first byte of the password.
	straddle := "k=" + strings.Repeat("y", 252) + `\;tail;z=1`
	tests := []struct {
		name       string
		target     string
		args       string // encoded as tor would send them
		wantTarget string
		wantUser   string
		wantPass   string
		wantArgs   pt.Args
	}{
		{"no args IPv4", "192.0.2.1:443", "", "192.0.2.1:443", "", "", nil},
		{"no args IPv6", "[2001:db8::1]:80", "", "[2001:db8::1]:80", "", "", nil},
		{"host name", "bridge.example:9", "", "bridge.example:9", "", "", nil},
		{"escaped args", "192.0.2.1:1",
			metadata.EncodeClientArgs(pt.Args{"cert": {`a;b=c\d`}, "iat-mode": {"0"}}),
			"192.0.2.1:1", `cert=a\;b\=c\\d;iat-mode=0`, "",
			pt.Args{"cert": {`a;b=c\d`}, "iat-mode": {"0"}}},
		{"exactly 255 bytes", "192.0.2.1:1", "k=" + strings.Repeat("v", 253),
			"192.0.2.1:1", "k=" + strings.Repeat("v", 253), "",
			pt.Args{"k": {strings.Repeat("v", 253)}}},
		{"over 255 bytes", "[::1]:2", long, "[::1]:2", long[:255], long[255:],
			pt.Args{"cert": {strings.Repeat("x", 395)}}},
		{"escape across the split", "192.0.2.1:3", straddle, "192.0.2.1:3", straddle[:255], straddle[255:],
			pt.Args{"k": {strings.Repeat("y", 252) + ";tail"}, "z": {"1"}}},
	}
	addr, reqs := goptlibServer(t, func(c *pt.SocksConn) {
		if c.Grant(nil) == nil {
			c.Write([]byte("after"))
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user, pass, err := metadata.SOCKS5Credentials(tt.args)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := DialSOCKS5(ctx, addr, tt.target, user, pass)
			if err != nil {
				t.Fatalf("DialSOCKS5: %v", err)
			}
			defer conn.Close()
			req := <-reqs
			if req.Target != tt.wantTarget || req.Username != tt.wantUser || req.Password != tt.wantPass {
				t.Errorf("goptlib read target %q user %q pass %q, want %q %q %q",
					req.Target, req.Username, req.Password, tt.wantTarget, tt.wantUser, tt.wantPass)
			}
			if len(req.Args) != 0 || len(tt.wantArgs) != 0 {
				if !reflect.DeepEqual(req.Args, tt.wantArgs) {
					t.Errorf("goptlib read args %v, want %v", req.Args, tt.wantArgs)
				}
			}
			// Nothing of the reply is left over, nothing after it eaten.
			got, err := io.ReadAll(conn)
			if err != nil || string(got) != "after" {
				t.Errorf("data after the handshake: %q, %v; want \"after\"", got, err)
			}
		})
	}
}

func TestHandshakeGoptlibRefuses(t *testing.T) {
	addr, _ := goptlibServer(t, func(c *pt.SocksConn) { c.RejectReason(pt.SocksRepConnectionRefused) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := DialSOCKS5(ctx, addr, "192.0.2.1:80", nil, nil)
	var re *ReplyError
	if !errors.As(err, &re) || re.Code != RepConnectionRefused {
		t.Fatalf("rejected request: got %v, want *ReplyError{0x05}", err)
	}

	// goptlib fails RFC 1929 authentication when the arguments do not parse.
	user, pass, _ := metadata.SOCKS5Credentials("no-equals-sign")
	_, err = DialSOCKS5(ctx, addr, "192.0.2.1:80", user, pass)
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("bad args: got %v, want ErrAuthFailed", err)
	}
}

// scriptServer answers whatever the client sends with script, then
// half-closes, and reads everything the client sends into the returned
// buffer (valid after the client conn is closed and wait is called).
func scriptServer(t *testing.T, script []byte) (client *net.TCPConn, wait func() []byte) {
	t.Helper()
	client, srv := tcpPair(t)
	var got bytes.Buffer
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Write(script)
		srv.CloseWrite()
		io.Copy(&got, srv)
	}()
	return client, func() []byte { client.Close(); wg.Wait(); return got.Bytes() }
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestHandshakeWire(t *testing.T) {
	okReply := []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	tests := []struct {
		name       string
		target     string
		user, pass []byte
		script     []byte
		want       []byte // every byte the client sends
	}{
		{"no credentials offer only 0x00", "127.0.0.1:80", nil, nil,
			cat([]byte{5, 0}, okReply),
			[]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80}},
		{"credentials offer only 0x02", "[2001:db8::2]:443", []byte("a=b"), []byte{0},
			cat([]byte{5, 2}, []byte{1, 0}, okReply),
			cat([]byte{5, 1, 2}, []byte{1, 3, 'a', '=', 'b', 1, 0},
				[]byte{5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 187})},
		{"host name", "bridge.example:65535", nil, nil,
			cat([]byte{5, 0}, okReply),
			cat([]byte{5, 1, 0, 5, 1, 0, 3, 14}, []byte("bridge.example"), []byte{255, 255})},
		{"IPv4-mapped IPv6 stays IPv6", "[::ffff:192.0.2.1]:1", nil, nil,
			cat([]byte{5, 0}, okReply),
			[]byte{5, 1, 0, 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1, 0, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, wait := scriptServer(t, tt.script)
			if err := Handshake(context.Background(), conn, tt.target, tt.user, tt.pass); err != nil {
				t.Fatalf("Handshake: %v", err)
			}
			if got := wait(); !bytes.Equal(got, tt.want) {
				t.Errorf("client sent\n% x\nwant\n% x", got, tt.want)
			}
		})
	}
}

func TestHandshakeReplies(t *testing.T) {
	trailer := []byte("DATA")
	tests := []struct {
		name    string
		auth    bool
		script  []byte
		wantErr error // nil: success, and trailer must still be readable
		code    byte  // for a *ReplyError
	}{
		{"IPv4 bound address", false, cat([]byte{5, 0, 5, 0, 0, 1, 1, 2, 3, 4, 0, 9}, trailer), nil, 0},
		{"IPv6 bound address", false, cat([]byte{5, 0, 5, 0, 0, 4}, make([]byte, 18), trailer), nil, 0},
		{"domain bound address", true, cat([]byte{5, 2, 1, 0, 5, 0, 0, 3, 3, 'a', 'b', 'c', 0, 1}, trailer), nil, 0},
		{"empty domain bound address", false, cat([]byte{5, 0, 5, 0, 0, 3, 0, 0, 1}, trailer), nil, 0},
		{"methods refused", false, []byte{5, 0xff}, ErrNoAcceptableMethods, 0},
		{"methods refused with auth", true, []byte{5, 0xff}, ErrNoAcceptableMethods, 0},
		{"wrong version", false, []byte{4, 0}, ErrMalformed, 0},
		{"method not offered", false, []byte{5, 2}, ErrMalformed, 0},
		{"none chosen when auth offered", true, []byte{5, 0}, ErrMalformed, 0},
		{"auth failed", true, []byte{5, 2, 1, 1}, ErrAuthFailed, 0},
		{"auth reply version", true, []byte{5, 2, 5, 0}, ErrMalformed, 0},
		{"connection refused", false, []byte{5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0}, nil, RepConnectionRefused},
		{"bare refusal", false, []byte{5, 0, 5, 1, 0, 1}, nil, RepGeneralFailure},
		{"reply version", false, []byte{5, 0, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0}, ErrMalformed, 0},
		{"reserved byte", false, []byte{5, 0, 5, 0, 1, 1, 0, 0, 0, 0, 0, 0}, ErrMalformed, 0},
		{"address type", false, []byte{5, 0, 5, 0, 0, 9, 0, 0, 0, 0, 0, 0}, ErrMalformed, 0},
		{"truncated bound address", false, []byte{5, 0, 5, 0, 0, 1, 127, 0}, io.ErrUnexpectedEOF, 0},
		{"truncated domain", false, []byte{5, 0, 5, 0, 0, 3, 200, 'a'}, io.ErrUnexpectedEOF, 0},
		{"truncated auth reply", true, []byte{5, 2, 1}, io.ErrUnexpectedEOF, 0},
		{"nothing", false, nil, io.EOF, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, wait := scriptServer(t, tt.script)
			defer wait()
			var user, pass []byte
			if tt.auth {
				user, pass = []byte("k=v"), []byte{0}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Handshake(ctx, conn, "192.0.2.1:80", user, pass)
			switch {
			case tt.code != 0:
				var re *ReplyError
				if !errors.As(err, &re) || re.Code != tt.code {
					t.Fatalf("got %v, want *ReplyError{0x%02x}", err, tt.code)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			default:
				if err != nil {
					t.Fatalf("Handshake: %v", err)
				}
				got, err := io.ReadAll(conn)
				if err != nil || !bytes.Equal(got, trailer) {
					t.Fatalf("after the reply: %q, %v; want %q", got, err, trailer)
				}
			}
		})
	}
}

func TestHandshakeBadInput(t *testing.T) {
	tests := []struct {
		name       string
		target     string
		user, pass []byte
		want       error
	}{
		{"no port", "192.0.2.1", nil, nil, ErrInvalidTarget},
		{"port 0", "192.0.2.1:0", nil, nil, ErrInvalidTarget},
		{"port too big", "192.0.2.1:65536", nil, nil, ErrInvalidTarget},
		{"named port", "192.0.2.1:http", nil, nil, ErrInvalidTarget},
		{"signed port", "192.0.2.1:+80", nil, nil, ErrInvalidTarget},
		{"empty host", ":80", nil, nil, ErrInvalidTarget},
		{"long host", strings.Repeat("h", 256) + ":80", nil, nil, ErrInvalidTarget},
		{"zone", "[fe80::1%eth0]:80", nil, nil, ErrInvalidTarget},
		{"user without password", "192.0.2.1:80", []byte("a=b"), nil, ErrInvalidCredentials},
		{"password without user", "192.0.2.1:80", nil, []byte("x"), ErrInvalidCredentials},
		{"long user", "192.0.2.1:80", bytes.Repeat([]byte("u"), 256), []byte{0}, ErrInvalidCredentials},
		{"long password", "192.0.2.1:80", []byte("u"), bytes.Repeat([]byte("p"), 256), ErrInvalidCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The peer is closed: had Handshake written anything first, it
			// would fail with io.ErrClosedPipe instead.
			c1, c2 := net.Pipe()
			c2.Close()
			defer c1.Close()
			err := Handshake(context.Background(), c1, tt.target, tt.user, tt.pass)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHandshakeContext(t *testing.T) {
	t.Run("cancel unblocks and the deadline is cleared", func(t *testing.T) {
		conn, peer := tcpPair(t)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			// Cancel once the handshake is under way.
			io.ReadFull(peer, make([]byte, 3))
			cancel()
		}()
		err := Handshake(ctx, conn, "192.0.2.1:80", nil, nil)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		// A past deadline left behind would fail this read at once.
		peer.Write([]byte{'z'})
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil || b[0] != 'z' {
			t.Fatalf("read after Handshake: %q, %v", b, err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		conn, _ := tcpPair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := Handshake(ctx, conn, "192.0.2.1:80", nil, nil)
		if err == nil || ReplyCodeFor(err) != RepTTLExpired {
			t.Fatalf("got %v (reply 0x%02x), want a timeout (0x06)", err, ReplyCodeFor(err))
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		c1, c2 := net.Pipe()
		c2.Close()
		defer c1.Close()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := Handshake(ctx, c1, "192.0.2.1:80", nil, nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
	t.Run("dial failure", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = DialSOCKS5(context.Background(), addr, "192.0.2.1:80", nil, nil)
		if ReplyCodeFor(err) != RepConnectionRefused {
			t.Fatalf("got %v (reply 0x%02x), want connection refused", err, ReplyCodeFor(err))
		}
	})
}
