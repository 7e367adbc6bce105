package extorport

import (
	"bytes"
	"io"
	"net/netip"
	"testing"
	"time"
)

// FuzzReadFrame: ReadFrame never panics, and what it accepts re-encodes to
// exactly the bytes it consumed.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte("\x00\x01\x00\x0c1.2.3.4:5678"))
	f.Add([]byte("\x00\x02\x00\x05obfs4\x00\x00\x00\x00"))
	f.Add([]byte{0x10, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Add([]byte{0, 1, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		cmd, body, err := ReadFrame(r)
		if err != nil {
			return
		}
		consumed := data[:len(data)-r.Len()]
		var buf bytes.Buffer
		if err := WriteFrame(&buf, cmd, body); err != nil {
			t.Fatalf("WriteFrame of a read frame: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), consumed) {
			t.Fatalf("re-encoded %x, consumed %x", buf.Bytes(), consumed)
		}
	})
}

// FuzzParseUserAddr: anything accepted is printable ASCII without NUL and
// names the same address and port once formatted canonically.
func FuzzParseUserAddr(f *testing.F) {
	for _, s := range []string{"1.2.3.4:5678", "[1:2::3:4]:5678", "nonsense", "1.2.3.4", "1.2.3.4:99999",
		"1.2.3.4:5678\x00", "[fe80::1%eth0]:80", "[::ffff:1.2.3.4]:1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := parseUserAddr(s)
		if err != nil {
			return
		}
		for i := 0; i < len(s); i++ {
			if s[i] < 0x21 || s[i] > 0x7e {
				t.Fatalf("accepted %q with byte 0x%02x", s, s[i])
			}
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" {
			t.Fatalf("accepted %q as %v", s, ap)
		}
		again, err := netip.ParseAddrPort(ap.String())
		if err != nil || again != ap {
			t.Fatalf("%q -> %v -> %v, %v", s, ap, again, err)
		}
	})
}

// FuzzCheckTransport: anything accepted is a C identifier.
func FuzzCheckTransport(f *testing.F) {
	for _, s := range []string{"obfs4", "_", "9x", "obfs3|obfs4", "", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if checkTransport(s) != nil {
			return
		}
		for i, c := range []byte(s) {
			letter := c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
			if !letter && (i == 0 || c < '0' || c > '9') {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}

// FuzzReadCookieFile: only 64 bytes starting with the header are accepted.
func FuzzReadCookieFile(f *testing.F) {
	f.Add([]byte(CookieHeader + "0123456789abcdef0123456789abcdef"))
	f.Add([]byte(CookieHeader))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		cookie, err := parseCookieFile(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(data) != 64 || string(data[:32]) != CookieHeader || !bytes.Equal(cookie, data[32:]) {
			t.Fatalf("accepted %x", data)
		}
	})
}

// FuzzServerHandshakeFrames authenticates properly over loopback, then
// feeds arbitrary bytes as frames and closes: ServerHandshake must return
// (the deadline backs up the EOF) without panicking, and what it accepts is
// valid metadata.
func FuzzServerHandshakeFrames(f *testing.F) {
	f.Add(cat(frame(CmdUserAddr, "1.2.3.4:5678"), frame(CmdTransport, "obfs4"), frame(CmdDone, "")))
	f.Add(cat(frame(CmdUserAddr, "[1:2::3:4]:5678"), frame(CmdDone, "")))
	f.Add(cat(frame(0x1234, "junk"), frame(CmdTransport, "a"), frame(CmdTransport, "b"), frame(CmdDone, "")))
	f.Add(frame(CmdUserAddr, "nonsense"))
	f.Add([]byte{0, 1, 0xff})
	f.Add([]byte{})
	ln := listen(f)
	cookie := bytes.Repeat([]byte{0x5a}, cookieLen)
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := tcpPair(t, ln)
		clientDone := make(chan error, 1)
		go func() {
			status, err := rawClientAuth(client, authTypeSafeCookie, cookie)
			if err == nil && status != authStatusSuccess {
				t.Errorf("auth status %d with the right cookie", status)
			}
			if err == nil {
				_, err = client.Write(data) // fails once the server is done: fine
				client.CloseWrite()
			}
			io.Copy(io.Discard, client)
			clientDone <- err
		}()
		meta, err := ServerHandshake(server, ServerConfig{Cookie: cookie, Timeout: 10 * time.Second})
		server.Close()
		<-clientDone
		if err != nil {
			return
		}
		if meta.UserAddr != "" {
			if _, perr := parseUserAddr(meta.UserAddr); perr != nil {
				t.Fatalf("accepted USERADDR %q: %v", meta.UserAddr, perr)
			}
		}
		if meta.Transport != "" && checkTransport(meta.Transport) != nil {
			t.Fatalf("accepted TRANSPORT %q", meta.Transport)
		}
	})
}

// FuzzClientHandshakeReplies plays a server that authenticates correctly
// but sends fuzzed AuthTypes, AuthStatus and reply frames, then closes:
// ClientHandshake must return without panicking, and may
// succeed only when SAFE_COOKIE was offered, the status was success and an
// OKAY came before any DENY.
func FuzzClientHandshakeReplies(f *testing.F) {
	f.Add([]byte{1, 0}, byte(1), frame(CmdOkay, ""))
	f.Add([]byte{2, 1, 0}, byte(1), cat(frame(CmdControl, "x"), frame(CmdOkay, "")))
	f.Add([]byte{1, 0}, byte(1), frame(CmdDeny, ""))
	f.Add([]byte{1, 0}, byte(0), frame(CmdOkay, ""))
	f.Add([]byte{2, 0}, byte(1), frame(CmdOkay, ""))
	f.Add([]byte{1}, byte(1), []byte{})
	f.Add([]byte{1, 0}, byte(1), []byte{0x10, 0})
	ln := listen(f)
	path, cookie := cookieFile(f)
	meta := Meta{UserAddr: "192.0.2.7:4321", Transport: "obfs3_obfs4"}
	f.Fuzz(func(t *testing.T, types []byte, status byte, replies []byte) {
		// AuthTypes always end (TestClientHandshakeFailures covers a list
		// without its end): the exchange then never waits on a timeout.
		if len(types) > maxAuthTypes-1 {
			types = types[:maxAuthTypes-1]
		}
		if bytes.IndexByte(types, 0) < 0 {
			types = append(types, 0)
		}
		client, server := tcpPair(t, ln)
		serverDone := make(chan struct{})
		go func() {
			defer close(serverDone)
			defer server.Close()
			server.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := server.Write(types); err != nil {
				return
			}
			msg := make([]byte, 1+nonceLen)
			if _, err := io.ReadFull(server, msg); err != nil {
				return
			}
			nonce := bytes.Repeat([]byte{7}, nonceLen)
			server.Write(append(authHash(cookie, serverHashContext, msg[1:], nonce), nonce...))
			if _, err := io.ReadFull(server, make([]byte, hashLen)); err != nil {
				return
			}
			if _, err := serverReadMeta(server, DefaultMaxFrames); err != nil {
				return
			}
			server.Write(append([]byte{status}, replies...))
			server.CloseWrite()
			io.Copy(io.Discard, server)
		}()
		err := ClientHandshake(client, ClientConfig{CookiePath: path, Timeout: 2 * time.Second}, meta)
		client.Close()
		<-serverDone
		if err != nil {
			return
		}
		end := bytes.IndexByte(types, 0)
		if end < 0 || bytes.IndexByte(types[:end], authTypeSafeCookie) < 0 {
			t.Fatalf("succeeded though AuthTypes %x offer no SAFE_COOKIE", types)
		}
		if status != authStatusSuccess {
			t.Fatalf("succeeded with AuthStatus %d", status)
		}
		r := bytes.NewReader(replies)
		for {
			cmd, _, rerr := ReadFrame(r)
			if rerr != nil {
				t.Fatalf("succeeded with no OKAY in the replies %x", replies)
			}
			if cmd == CmdDeny {
				t.Fatalf("succeeded after a DENY in %x", replies)
			}
			if cmd == CmdOkay {
				return
			}
		}
	})
}
