package shim

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// ReadProxyRequest on the wire: what it accepts, what it answers, and
// what it leaves unread.
func TestReadProxyRequestWire(t *testing.T) {
	long := strings.Repeat("a", 255)
	rep := func(code byte) []byte { return []byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0} }
	check := func(user, pass []byte) bool { return string(user) == "alice" && string(pass) == "s3cret" }
	auth := func(user, pass string) []byte {
		return cat([]byte{1, byte(len(user))}, []byte(user), []byte{byte(len(pass))}, []byte(pass))
	}
	for _, tc := range []struct {
		name      string
		check     func(user, pass []byte) bool
		in        []byte
		wantErr   error
		want      ProxyRequest
		wantReply []byte
	}{
		{"CONNECT IPv4", nil, []byte{5, 1, 0, 5, 1, 0, 1, 192, 0, 2, 1, 0, 80}, nil,
			ProxyRequest{Command: CmdConnect, Dst: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 80}}, []byte{5, 0}},
		{"CONNECT a 255-byte name", nil, cat([]byte{5, 1, 0, 5, 1, 0, 3, 255}, []byte(long), []byte{1, 187}), nil,
			ProxyRequest{Command: CmdConnect, Dst: Addr{Name: long, Port: 443}}, []byte{5, 0}},
		{"UDP ASSOCIATE", nil, []byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, nil,
			ProxyRequest{Command: CmdUDPAssociate, Dst: Addr{IP: netip.IPv4Unspecified()}}, []byte{5, 0}},
		{"BIND", nil, []byte{5, 1, 0, 5, 2, 0, 1}, ErrCommandNotSupported, ProxyRequest{},
			cat([]byte{5, 0}, rep(RepCommandNotSupported))},
		{"no auth wanted, only 0x02 offered", nil, []byte{5, 1, 2}, ErrNoAcceptableMethods, ProxyRequest{}, []byte{5, 0xff}},
		{"auth", check, cat([]byte{5, 2, 0, 2}, auth("alice", "s3cret"), []byte{5, 1, 0, 1, 192, 0, 2, 1, 0, 80}), nil,
			ProxyRequest{Command: CmdConnect, Dst: Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 80}, Username: "alice"},
			[]byte{5, 2, 1, 0}},
		{"auth, wrong password", check, cat([]byte{5, 1, 2}, auth("alice", "guess")), ErrAuthFailed, ProxyRequest{},
			[]byte{5, 2, 1, 1}},
		{"auth, unknown user", check, cat([]byte{5, 1, 2}, auth("mallory", "s3cret")), ErrAuthFailed, ProxyRequest{},
			[]byte{5, 2, 1, 1}},
		{"auth wanted, only 0x00 offered", check, []byte{5, 1, 0}, ErrNoAcceptableMethods, ProxyRequest{}, []byte{5, 0xff}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, srv := tcpPair(t)
			client.Write(tc.in)
			client.CloseWrite()
			req, err := ReadProxyRequest(srv, 5*time.Second, tc.check)
			switch {
			case tc.wantErr == nil && (err != nil || *req != tc.want):
				t.Errorf("got %+v, %v; want %+v", req, err, tc.want)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("got %+v, %v; want %v", req, err, tc.wantErr)
			}
			if left, _ := io.ReadAll(srv); len(left) != 0 {
				t.Errorf("left unread: % x", left)
			}
			srv.Close()
			if reply, _ := io.ReadAll(client); !bytes.Equal(reply, tc.wantReply) {
				t.Errorf("replied % x, want % x", reply, tc.wantReply)
			}
		})
	}
}

// The reply to UDP ASSOCIATE carries the relay's address.
func TestReplyBound(t *testing.T) {
	client, srv := tcpPair(t)
	if err := ReplyBound(srv, RepSucceeded, AddrFrom(netip.MustParseAddrPort("127.0.0.1:5353"))); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	got, _ := io.ReadAll(client)
	if want := []byte{5, 0, 0, 1, 127, 0, 0, 1, 0x14, 0xe9}; !bytes.Equal(got, want) {
		t.Errorf("replied % x, want % x", got, want)
	}
}

// RFC 1928 section 7's UDP header, both ways.
func TestUDPRequest(t *testing.T) {
	dst, data, err := ParseUDPRequest([]byte{0, 0, 0, 3, 3, 'a', '.', 'b', 0, 53, 'q', 'r'})
	if err != nil || dst.String() != "a.b:53" || string(data) != "qr" {
		t.Errorf("ParseUDPRequest = %v %q %v", dst, data, err)
	}
	for _, tc := range []struct {
		in   []byte
		want error
	}{
		{[]byte{0, 0, 1, 1, 1, 2, 3, 4, 0, 1}, ErrFragmented},
		{[]byte{0, 1, 0, 1, 1, 2, 3, 4, 0, 1}, ErrMalformed},
		{[]byte{0, 0}, ErrMalformed},
		{[]byte{0, 0, 0, 1, 1, 2}, ErrMalformed},
		{[]byte{0, 0, 0, 7, 1, 2}, ErrAddressNotSupported},
	} {
		if _, _, err := ParseUDPRequest(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("ParseUDPRequest(% x): %v, want %v", tc.in, err, tc.want)
		}
	}
	hdr, err := AppendUDPHeader(nil, AddrFrom(netip.MustParseAddrPort("[2001:db8::2]:9")))
	if err != nil || len(hdr) != 3+1+16+2 || hdr[3] != 4 {
		t.Errorf("AppendUDPHeader = % x, %v", hdr, err)
	}
}
