package chain

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

func TestParseProxyProtocol(t *testing.T) {
	good := map[string]string{
		"127.0.0.1":                 "127.0.0.1/32",
		"10.0.0.0/8,192.0.2.7":      "10.0.0.0/8 192.0.2.7/32",
		"10.1.2.3/8":                "10.0.0.0/8",
		" 2001:db8::/32 , ::1 ":     "2001:db8::/32 ::1/128",
		"::ffff:192.0.2.1":          "192.0.2.1/32",
		"::ffff:192.0.2.0/120":      "192.0.2.0/24",
		"192.0.2.1 198.51.100.0/24": "192.0.2.1/32 198.51.100.0/24",
	}
	for in, want := range good {
		got, err := ParseProxyProtocol(in)
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if err != nil || strings.Join(s, " ") != want {
			t.Errorf("ParseProxyProtocol(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for _, in := range []string{"", ",", "10.0.0.0/33", "localhost", "10.0.0.1:80", "fe80::1%eth0/64"} {
		if got, err := ParseProxyProtocol(in); err == nil {
			t.Errorf("ParseProxyProtocol(%q) = %v, want an error", in, got)
		}
	}
	cfg, err := Parse(strings.NewReader("ProxyProtocol 10.0.0.0/8, 127.0.0.1\nProxyProtocol 127.0.0.1\n"), "cfg", ServerRole)
	if err != nil || len(cfg.ProxyProtocol) != 2 {
		t.Errorf("ProxyProtocol lines: %v, %v; want two prefixes", cfg.ProxyProtocol, err)
	}
	if cfg, err := Parse(strings.NewReader("ProxyProtocol 10.0.0.0/8\n"), "cfg", ClientRole); err != nil || len(cfg.ProxyProtocol) != 0 {
		t.Errorf("the client reads ProxyProtocol lines: %v, %v", cfg.ProxyProtocol, err)
	}
	if _, err := Parse(strings.NewReader("ProxyProtocol nowhere\n"), "cfg", ServerRole); err == nil {
		t.Error("ProxyProtocol nowhere: no error")
	}
}

// ppServer runs chain x, one in-process test PT hop (key 0: the bytes go
// as they come after its header line), behind --proxy-protocol 127.0.0.2,
// towards an echoing Extended ORPort.
func ppServer(t *testing.T) (*testServer, *echoTor, string) {
	t.Helper()
	tor := startEchoTor(t)
	cfg, binds := hopsConfig(t, map[string]metadata.Args{"x": {"key": {"0"}}}, "--builtin", "xor", "--chain", "x=xor")
	if err := cfg.AddProxyProtocolFlag("127.0.0.2"); err != nil {
		t.Fatal(err)
	}
	ts, pubs := startServerConfig(t, cfg, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath,
		ProxyHeaderTimeout: 300 * time.Millisecond,
		InProcess:          map[string]transport.ServerTransport{"xor": xorHop("xor")}}, binds)
	if pubs[0].Err != nil {
		t.Fatal(pubs[0].Err)
	}
	return ts, tor, pubs[0].Addr.String()
}

func dialFrom(t *testing.T, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// echoes sends the chain's header and a payload after prefix (in writes
// of split bytes each, 0 for one write) and reads the payload back.
func echoes(c *net.TCPConn, prefix []byte, split int) error {
	msg := append(append(prefix, "TESTPT1 xor 0\n"...), "hello through the chain"...)
	for len(msg) > 0 {
		n := len(msg)
		if split > 0 {
			n = min(n, split)
		}
		if _, err := c.Write(msg[:n]); err != nil {
			return err
		}
		msg = msg[n:]
		if split > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	got := make([]byte, len("hello through the chain"))
	c.SetReadDeadline(time.Now().Add(eventCeiling))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != "hello through the chain" {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// refused reports whether the server closes c (EOF or reset) before it
// echoes anything.
func refused(c *net.TCPConn) bool {
	c.SetReadDeadline(time.Now().Add(eventCeiling))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil && !errorsIsTimeout(err)
}

func errorsIsTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func header(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)),
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// From a trusted source, a v1 or v2 header's source is the client tor
// hears, the header read to its last byte whether it comes with the
// client's first bytes or a few bytes at a time; a LOCAL header (a health
// check) leaves the connection's own address. Without a header, or with a
// malformed one, the connection is refused; one closed before its first
// byte, or silent, leaves nothing above debug in the log.
func TestServerProxyProtocolTrusted(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, after the server's and tor's cleanup
	ts, tor, public := ppServer(t)
	for _, tc := range []struct {
		name   string
		prefix []byte
		split  int
		want   string // USERADDR; "" for the connection's own
	}{
		{"v1", header(t, 1, "203.0.113.7:40000", "192.0.2.1:443"), 0, "203.0.113.7:40000"},
		{"v1 in pieces", header(t, 1, "203.0.113.8:40001", "192.0.2.1:443"), 3, "203.0.113.8:40001"},
		{"v1 tcp6", header(t, 1, "[2001:db8::7]:40002", "[2001:db8::1]:443"), 0, "[2001:db8::7]:40002"},
		{"v2", header(t, 2, "198.51.100.9:40003", "192.0.2.1:443"), 0, "198.51.100.9:40003"},
		{"v2 in pieces", header(t, 2, "198.51.100.10:40004", "192.0.2.1:443"), 5, "198.51.100.10:40004"},
		{"v2 ipv6", header(t, 2, "[2001:db8::9]:40005", "[2001:db8::1]:443"), 0, "[2001:db8::9]:40005"},
		{"v2 LOCAL", mustFormat(t, &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}), 0, ""},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), 0, ""},
	} {
		c := dialFrom(t, "127.0.0.2", public)
		if err := echoes(c, tc.prefix, tc.split); err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		want := tc.want
		if want == "" {
			want = c.LocalAddr().String()
		}
		if got := tor.lastMeta(t).UserAddr; got != want {
			t.Errorf("%s: tor heard USERADDR %s, want %s", tc.name, got, want)
		}
		c.Close()
	}

	for _, tc := range []struct {
		name, send, log string
	}{
		{"no header", "TESTPT1 xor 0\nhello", "a source that --proxy-protocol trusts sent no valid PROXY header"},
		{"bad v1", "PROXY TCP4 1.2.3.4 nonsense\r\n", "a source that --proxy-protocol trusts sent no valid PROXY header"},
		{"v1 without CRLF", "PROXY " + strings.Repeat("x", 120), "a source that --proxy-protocol trusts sent no valid PROXY header"},
		{"v2 UDP", string(header(t, 2, "198.51.100.9:40003", "192.0.2.1:443")[:13]) + "\x12\x00\x0c" + strings.Repeat("\x01", 12), "its PROXY header names no usable client"},
	} {
		c := dialFrom(t, "127.0.0.2", public)
		c.Write([]byte(tc.send))
		if !refused(c) {
			t.Errorf("%s: not refused", tc.name)
		}
		if err := waitLog(ts.logs, eventCeiling, "level=WARN", tc.log, "from=127.0.0.2:"); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}

	// A health check: connect and close, or connect and say nothing.
	before := len(aboveDebug(ts.logs))
	c := dialFrom(t, "127.0.0.2", public)
	c.Close()
	if err := waitLog(ts.logs, eventCeiling, "level=DEBUG", "a trusted source ended or said nothing before a PROXY header", "err=EOF"); err != nil {
		t.Error(err)
	}
	c = dialFrom(t, "127.0.0.2", public)
	if !refused(c) {
		t.Error("a silent trusted connection is not closed after the header timeout")
	}
	for _, h := range [][]byte{mustFormat(t, &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL}), []byte("PROXY UNKNOWN\r\n")} {
		c = dialFrom(t, "127.0.0.2", public)
		c.Write(h)
		c.CloseWrite()
		if !refused(c) {
			t.Errorf("%q then the end: not closed", h)
		}
	}
	if err := waitLog(ts.logs, eventCeiling, "level=DEBUG", "then the end: a health check"); err != nil {
		t.Error(err)
	}
	if got := aboveDebug(ts.logs); len(got) != before {
		t.Errorf("health checks logged above debug: %q", got[before:])
	}
}

func mustFormat(t *testing.T, h *proxyproto.Header) []byte {
	t.Helper()
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func aboveDebug(l *logBuf) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if line != "" && !strings.Contains(line, "level=DEBUG") {
			out = append(out, line)
		}
	}
	return out
}

// From any other source, a connection that starts with a PROXY header is
// refused at once, and tor never hears the address it names; one that
// does not is served as without --proxy-protocol, its own address the
// client's; one closed before its first byte logs nothing above debug.
func TestServerProxyProtocolUntrusted(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ts, tor, public := ppServer(t)
	for _, h := range [][]byte{header(t, 1, "203.0.113.66:1234", "192.0.2.1:443"), header(t, 2, "203.0.113.66:1234", "192.0.2.1:443")} {
		c := dialFrom(t, "127.0.0.1", public)
		if err := echoes(c, h, 0); err == nil {
			t.Errorf("a forged header %q from an untrusted source was served", h[:5])
		}
		if err := waitLog(ts.logs, eventCeiling, "level=WARN", "it sends a PROXY header, but its source is not one that --proxy-protocol trusts"); err != nil {
			t.Error(err)
		}
	}
	c := dialFrom(t, "127.0.0.1", public)
	if err := echoes(c, nil, 1); err != nil {
		t.Fatal(err)
	}
	if got := tor.lastMeta(t).UserAddr; got != c.LocalAddr().String() {
		t.Errorf("tor heard %s, want the connection's own %s", got, c.LocalAddr())
	}
	tor.mu.Lock()
	for _, m := range tor.metas {
		if strings.HasPrefix(m.UserAddr, "203.0.113.66") {
			t.Errorf("tor heard the forged address %s", m.UserAddr)
		}
	}
	tor.mu.Unlock()
	before := len(aboveDebug(ts.logs))
	dialFrom(t, "127.0.0.1", public).Close()
	if err := waitLog(ts.logs, eventCeiling, "level=DEBUG", "closed before its first byte"); err != nil {
		t.Error(err)
	}
	if got := aboveDebug(ts.logs); len(got) != before {
		t.Errorf("a connect-and-close logged above debug: %q", got[before:])
	}
}

// sniffProxyHeader waits for more bytes while the first ones could begin a
// signature, decides at the first byte that cannot, and consumes nothing.
func TestSniffProxyHeader(t *testing.T) {
	for _, tc := range []struct {
		parts [][]byte
		want  bool
	}{
		{[][]byte{[]byte("PROXY TCP4 ")}, true},
		{[][]byte{[]byte("PR"), []byte("OXY")}, true},
		{[][]byte{[]byte("\r\n\r\n"), []byte("\x00\r\nQUIT\n\x21")}, true},
		{[][]byte{[]byte("PRX")}, false},
		{[][]byte{[]byte("P"), []byte("ING")}, false},
		{[][]byte{[]byte("\r\n\r\n\x00\r\nQUIX")}, false},
		{[][]byte{{0x16, 0x03, 0x01}}, false},
	} {
		a, b := tcpPair(t)
		go func() {
			for _, p := range tc.parts {
				a.Write(p)
				time.Sleep(20 * time.Millisecond)
			}
		}()
		b.SetReadDeadline(time.Now().Add(eventCeiling))
		got, err := sniffProxyHeader(b)
		if err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.parts, got, err, tc.want)
		}
		first := make([]byte, len(tc.parts[0]))
		if _, err := io.ReadFull(b, first); err != nil || !bytes.Equal(first, tc.parts[0]) {
			t.Errorf("%q: the bytes after sniffing are %q, %v", tc.parts, first, err)
		}
		a.Close()
		b.Close()
	}
}

func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}
