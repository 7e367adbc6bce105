package extorport

import (
	"crypto/rand"
	"io"
	"net"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// listen returns a loopback listener closed at the end of the test.
func listen(tb testing.TB) *net.TCPListener {
	tb.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// tcpPair returns both ends of a loopback TCP connection, closed at the end
// of the test.
func tcpPair(tb testing.TB, ln *net.TCPListener) (client, server *net.TCPConn) {
	tb.Helper()
	client, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		tb.Fatal(err)
	}
	server, err = ln.AcceptTCP()
	if err != nil {
		client.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// cookieFile writes a fresh cookie file in a temporary directory.
func cookieFile(tb testing.TB) (path string, cookie []byte) {
	tb.Helper()
	path = filepath.Join(tb.TempDir(), "extended_orport_auth_cookie")
	cookie, err := WriteCookieFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return path, cookie
}

// frame encodes one frame for hand-made peers.
func frame(cmd uint16, body string) []byte {
	var b frameBuffer
	if err := WriteFrame(&b, cmd, []byte(body)); err != nil {
		panic(err) // test inputs only
	}
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// rawClientAuth plays the client side of authentication by hand: it reads
// the auth types, answers authType and, for SAFE_COOKIE, a nonce and a client
// hash computed with cookie (without checking the server's hash). It returns
// the auth status byte, or -1 when none was read.
func rawClientAuth(c io.ReadWriter, authType byte, cookie []byte) (int, error) {
	types := make([]byte, 2)
	if _, err := io.ReadFull(c, types); err != nil {
		return -1, err
	}
	if _, err := c.Write([]byte{authType}); err != nil {
		return -1, err
	}
	if authType != authTypeSafeCookie {
		return -1, nil
	}
	nonce := make([]byte, nonceLen)
	rand.Read(nonce)
	if _, err := c.Write(nonce); err != nil {
		return -1, err
	}
	reply := make([]byte, hashLen+nonceLen)
	if _, err := io.ReadFull(c, reply); err != nil {
		return -1, err
	}
	if _, err := c.Write(authHash(cookie, clientHashContext, nonce, reply[hashLen:])); err != nil {
		return -1, err
	}
	var status [1]byte
	if _, err := io.ReadFull(c, status[:]); err != nil {
		return -1, err
	}
	return int(status[0]), nil
}
