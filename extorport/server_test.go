package extorport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestServerHandshake drives ServerHandshake with a hand-made client over
// loopback: authentication outcomes, frame parsing and truncated or stalled
// streams. Every case must end with a result, never hang.
func TestServerHandshake(t *testing.T) {
	wrongCookie := bytes.Repeat([]byte{7}, cookieLen)
	userAddr := frame(CmdUserAddr, "1.2.3.4:5678")
	transport := frame(CmdTransport, "obfs4")
	done := frame(CmdDone, "")
	tests := []struct {
		name       string
		authType   *byte  // nil: choose SAFE_COOKIE
		cookie     []byte // nil: the right cookie
		raw        []byte // non-nil: send these bytes instead of authenticating
		after      []byte // bytes sent after authentication
		stall      bool   // keep the connection open instead of closing for writing
		maxFrames  int
		wantStatus int // auth status the client reads, -1 for none
		wantErr    error
		wantMeta   Meta
	}{
		{name: "ok", after: cat(userAddr, transport, done), wantStatus: 1,
			wantMeta: Meta{UserAddr: "1.2.3.4:5678", Transport: "obfs4"}},
		{name: "ok ipv6", after: cat(frame(CmdUserAddr, "[1:2::3:4]:5678"), done), wantStatus: 1,
			wantMeta: Meta{UserAddr: "[1:2::3:4]:5678"}},
		{name: "nothing but DONE", after: done, wantStatus: 1},
		{name: "DONE body ignored", after: frame(CmdDone, "xyz"), wantStatus: 1},
		{name: "last TRANSPORT wins", after: cat(frame(CmdTransport, "a"), frame(CmdTransport, "b_2"), done), wantStatus: 1,
			wantMeta: Meta{Transport: "b_2"}},
		{name: "unknown commands ignored", after: cat(frame(0x0003, "x"), frame(CmdOkay, ""), frame(0xffff, strings.Repeat("z", 1000)), transport, done),
			wantStatus: 1, wantMeta: Meta{Transport: "obfs4"}},
		{name: "exactly MaxFrames", maxFrames: 3, after: cat(userAddr, transport, done), wantStatus: 1,
			wantMeta: Meta{UserAddr: "1.2.3.4:5678", Transport: "obfs4"}},
		{name: "bytes after DONE not read", after: cat(transport, done, []byte("OR data")), wantStatus: 1,
			wantMeta: Meta{Transport: "obfs4"}},

		{name: "wrong cookie", cookie: wrongCookie, wantStatus: 0, wantErr: ErrAuthFailed},
		{name: "auth type 0", authType: byteP(0), wantStatus: -1, wantErr: ErrUnsupportedAuth},
		{name: "auth type 2", authType: byteP(2), wantStatus: -1, wantErr: ErrUnsupportedAuth},
		{name: "auth type 255", authType: byteP(255), wantStatus: -1, wantErr: ErrUnsupportedAuth},

		{name: "USERADDR nonsense", after: cat(frame(CmdUserAddr, "nonsense"), done), wantStatus: 1, wantErr: ErrBadUserAddr},
		{name: "USERADDR no port", after: cat(frame(CmdUserAddr, "1.2.3.4"), done), wantStatus: 1, wantErr: ErrBadUserAddr},
		{name: "USERADDR port too big", after: cat(frame(CmdUserAddr, "1.2.3.4:99999"), done), wantStatus: 1, wantErr: ErrBadUserAddr},
		{name: "USERADDR NUL", after: cat(frame(CmdUserAddr, "1.2.3.4:5678\x00"), done), wantStatus: 1, wantErr: ErrBadUserAddr},
		{name: "USERADDR empty", after: cat(frame(CmdUserAddr, ""), done), wantStatus: 1, wantErr: ErrBadUserAddr},
		{name: "USERADDR v6 unbracketed", after: cat(frame(CmdUserAddr, "1:2::3:4:5678"), done), wantStatus: 1, wantErr: ErrBadUserAddr},
		{name: "TRANSPORT pipe", after: cat(frame(CmdTransport, "obfs3|obfs4"), done), wantStatus: 1, wantErr: ErrBadTransport},
		{name: "TRANSPORT empty", after: cat(frame(CmdTransport, ""), done), wantStatus: 1, wantErr: ErrBadTransport},
		{name: "TRANSPORT digit first", after: cat(frame(CmdTransport, "9x"), done), wantStatus: 1, wantErr: ErrBadTransport},
		{name: "too many frames", maxFrames: 3, after: cat(frame(0x0003, ""), frame(0x0003, ""), frame(0x0003, ""), done),
			wantStatus: 1, wantErr: ErrTooManyFrames},
		{name: "default MaxFrames", after: cat(bytes.Repeat(frame(0x0004, ""), DefaultMaxFrames), done),
			wantStatus: 1, wantErr: ErrTooManyFrames},

		{name: "EOF before any frame", wantStatus: 1, wantErr: io.EOF},
		{name: "EOF in frame header", after: []byte{0, 1, 0}, wantStatus: 1, wantErr: io.ErrUnexpectedEOF},
		{name: "EOF in frame body", after: []byte{0, 1, 0, 9, '1', '.'}, wantStatus: 1, wantErr: io.ErrUnexpectedEOF},
		{name: "EOF before auth type", raw: []byte{}, wantStatus: -1, wantErr: io.EOF},
		{name: "EOF in client nonce", raw: cat([]byte{1}, make([]byte, 10)), wantStatus: -1, wantErr: io.ErrUnexpectedEOF},
		{name: "EOF in client hash", raw: cat([]byte{1}, make([]byte, nonceLen+5)), wantStatus: -1, wantErr: io.ErrUnexpectedEOF},
		{name: "stall in frames", after: userAddr[:3], stall: true, wantStatus: 1, wantErr: os.ErrDeadlineExceeded},
		{name: "stall in auth", raw: []byte{1}, stall: true, wantStatus: -1, wantErr: os.ErrDeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, cookie := cookieFile(t)
			client, server := tcpPair(t, listen(t))
			type result struct {
				status int
				err    error
			}
			clientDone := make(chan result, 1)
			go func() {
				r := result{status: -1}
				defer func() { clientDone <- r }()
				if tt.raw != nil {
					if _, err := client.Read(make([]byte, 2)); err != nil {
						r.err = err
						return
					}
					_, r.err = client.Write(tt.raw)
				} else {
					authType, c := byte(authTypeSafeCookie), cookie
					if tt.authType != nil {
						authType = *tt.authType
					}
					if tt.cookie != nil {
						c = tt.cookie
					}
					if r.status, r.err = rawClientAuth(client, authType, c); r.err == nil && r.status == 1 {
						_, r.err = client.Write(tt.after)
					}
				}
				if !tt.stall {
					client.CloseWrite()
				}
				// Hold the connection until the server is done with it.
				io.Copy(io.Discard, client)
			}()

			timeout := time.Minute // a hang fails via the test timeout, not here
			if tt.stall {
				timeout = 100 * time.Millisecond
			}
			meta, err := ServerHandshake(server, ServerConfig{Cookie: cookie, Timeout: timeout, MaxFrames: tt.maxFrames})
			var rest []byte
			if err == nil {
				rest, _ = io.ReadAll(server)
			}
			server.Close()
			r := <-clientDone
			if r.err != nil {
				t.Fatalf("client: %v", r.err)
			}
			if r.status != tt.wantStatus {
				t.Errorf("auth status = %d, want %d", r.status, tt.wantStatus)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ServerHandshake: %v", err)
				}
				if meta != tt.wantMeta {
					t.Errorf("meta = %+v, want %+v", meta, tt.wantMeta)
				}
				if want := []byte("OR data"); tt.name == "bytes after DONE not read" && !bytes.Equal(rest, want) {
					t.Errorf("bytes after DONE = %q, want %q", rest, want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("ServerHandshake error = %v, want %v", err, tt.wantErr)
			}
			if meta != (Meta{}) {
				t.Errorf("meta on error = %+v, want zero", meta)
			}
		})
	}
}

func TestServerHandshakeBadCookieConfig(t *testing.T) {
	client, server := tcpPair(t, listen(t))
	_, err := ServerHandshake(server, ServerConfig{Cookie: []byte("short")})
	if !errors.Is(err, ErrBadCookie) {
		t.Fatalf("error = %v, want ErrBadCookie", err)
	}
	// Nothing was sent.
	server.Close()
	if b, _ := io.ReadAll(client); len(b) != 0 {
		t.Errorf("server sent %q before refusing its config", b)
	}
}

func TestOkayDenyFrames(t *testing.T) {
	for _, tt := range []struct {
		name string
		send func(c *net.TCPConn) error
		want []byte
	}{
		{"okay", func(c *net.TCPConn) error { return Okay(c) }, []byte{0x10, 0x00, 0, 0}},
		{"deny", func(c *net.TCPConn) error { return Deny(c) }, []byte{0x10, 0x01, 0, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, server := tcpPair(t, listen(t))
			if err := tt.send(server); err != nil {
				t.Fatal(err)
			}
			server.Close()
			got, err := io.ReadAll(client)
			if err != nil || !bytes.Equal(got, tt.want) {
				t.Errorf("got %x, %v; want %x", got, err, tt.want)
			}
		})
	}
}

func byteP(b byte) *byte { return &b }
