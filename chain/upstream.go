package chain

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// upstream returns the DialFunc that reaches the network through tor's
// proxy, for an in-process outermost hop. pt-spec 3.2.2, TOR_PT_PROXY:
// "<proxy_type>://[<user_name>[:<password>][@]<ip>:<port>", where
// proxy_type is socks5, socks4a or http (an HTTP CONNECT proxy). Errors
// never repeat the URL, which may hold a password.
func upstream(rawURL string) (transport.DialFunc, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || u.Port() == "" {
		return nil, errors.New("tor's proxy (TOR_PT_PROXY) is not <type>://[user[:password]@]host:port")
	}
	proxy := u.Host
	switch u.Scheme {
	case "socks5":
		var user, pass []byte
		if u.User != nil {
			p, _ := u.User.Password()
			user, pass = []byte(u.User.Username()), []byte(p)
		}
		return func(ctx context.Context, addr string) (net.Conn, error) {
			return shim.DialSOCKS5(ctx, proxy, addr, user, pass)
		}, nil
	case "socks4a":
		return func(ctx context.Context, addr string) (net.Conn, error) {
			return dialProxy(ctx, proxy, addr, func(c net.Conn) (net.Conn, error) { return socks4aConnect(c, addr, u.User.Username()) })
		}, nil
	case "http":
		return func(ctx context.Context, addr string) (net.Conn, error) {
			return dialProxy(ctx, proxy, addr, func(c net.Conn) (net.Conn, error) { return httpConnect(c, addr, u.User) })
		}, nil
	}
	return nil, fmt.Errorf("tor's proxy type %q is not supported by in-process hops (socks5, socks4a, http are)", u.Scheme)
}

// dialProxy connects to proxy and runs connect, bounded by ctx, to reach
// addr through it. On error the connection is closed.
func dialProxy(ctx context.Context, proxy, addr string, connect func(net.Conn) (net.Conn, error)) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	conn, err := connect(c)
	if !stop() && err == nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("proxy could not reach %s: %w", addr, err)
	}
	c.SetDeadline(time.Time{})
	return conn, nil
}

// socks4aConnect asks a SOCKS4a proxy to CONNECT to addr: VN 4, CD 1,
// DSTPORT, DSTIP (0.0.0.1 for a name, which follows USERID), USERID, NUL.
func socks4aConnect(c net.Conn, addr, user string) (net.Conn, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", portStr, err)
	}
	req := []byte{4, 1, byte(port >> 8), byte(port)}
	if ip := net.ParseIP(host).To4(); ip != nil {
		req = append(append(append(req, ip...), user...), 0)
	} else {
		req = append(append(append(append(req, 0, 0, 0, 1), user...), 0), append([]byte(host), 0)...)
	}
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	var reply [8]byte
	if _, err := io.ReadFull(c, reply[:]); err != nil {
		return nil, fmt.Errorf("socks4a reply: %w", err)
	}
	if reply[1] != 0x5a { // "request granted"
		return nil, fmt.Errorf("socks4a: request rejected (0x%02x)", reply[1])
	}
	return c, nil
}

// httpConnect asks an HTTP proxy to CONNECT to addr (RFC 9110 9.3.6),
// with basic authentication when the URL has a user.
func httpConnect(c net.Conn, addr string, user *url.Userinfo) (net.Conn, error) {
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if user != nil {
		pass, _ := user.Password()
		req += "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(user.Username()+":"+pass)) + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return nil, fmt.Errorf("http proxy reply: %w", err)
	}
	// The body is not read: after a CONNECT, what follows is the tunnel.
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("http proxy: %s", resp.Status)
	}
	if br.Buffered() > 0 { // the server spoke already: keep its bytes
		return &bufferedConn{Conn: c, r: br}, nil
	}
	return c, nil
}

// bufferedConn is a connection whose first bytes were read ahead.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("cannot half-close")
}
