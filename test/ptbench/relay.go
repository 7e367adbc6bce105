package main

// The reference: the least any combiner must do, written the obvious way,
// as a developer would in an afternoon. Its client side takes the
// application's SOCKS5 request, dials each PT through golang.org/x/net/proxy
// with that hop's arguments, on a one-use loopback listener per inner hop
// (so that streams are never paired by arrival order), and joins the
// connections with io.Copy. Its server side takes each PT server's streams
// on an Extended ORPort (the only way to know, exactly, which client a stream
// belongs to), forwards them to the next PT server, and the innermost one to
// the sink's Extended ORPort with the client's address, as tor needs it. It
// uses the project's extorport package for that protocol, and nothing else
// of the project's.
//
// No supervision, limits, timeouts, logging or error reporting: those are
// the combiner's and cost it nothing per byte.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"golang.org/x/net/proxy"
)

// relayHop is one client-side hop of the reference: a PT's SOCKS address
// and the credentials that carry its arguments.
type relayHop struct {
	SOCKS string `json:"socks"`
	User  []byte `json:"user"`
	Pass  []byte `json:"pass"`
}

func runRelayClient(stdin io.Reader, args []string) error {
	if len(args) != 1 {
		return errors.New("usage: relay-client loop|splice")
	}
	if err := setCopy(args[0]); err != nil {
		return err
	}
	in := bufio.NewReader(stdin)
	line, err := in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var hops []relayHop
	if err := json.Unmarshal(line, &hops); err != nil || len(hops) == 0 {
		return fmt.Errorf("bad config %q: %v", line, err)
	}
	dialers := make([]proxy.Dialer, len(hops))
	for i, h := range hops {
		var auth *proxy.Auth
		if len(h.User) > 0 {
			auth = &proxy.Auth{User: string(h.User), Password: string(h.Pass)}
		}
		if dialers[i], err = proxy.SOCKS5("tcp", h.SOCKS, auth, proxy.Direct); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go serveEach(ln, func(app net.Conn) { relayClientConn(app, dialers) })
	fmt.Printf("SOCKS %s\n", ln.Addr())
	io.Copy(io.Discard, in)
	return nil
}

// relayClientConn carries one application connection through the hops.
func relayClientConn(app net.Conn, dialers []proxy.Dialer) {
	defer app.Close()
	target, err := readSOCKS5(app)
	if err != nil {
		return
	}
	n := len(dialers)
	// One-use listeners for hops 1..n-1: hop i-1 connects to listener i,
	// within a minute (a hop that never does must not keep the listener).
	lns := make([]*net.TCPListener, n)
	for i := 1; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range lns[1:i] {
				l.Close()
			}
			return
		}
		lns[i] = l.(*net.TCPListener)
		lns[i].SetDeadline(time.Now().Add(time.Minute))
	}
	for i := 1; i < n; i++ {
		next := target
		if i < n-1 {
			next = lns[i+1].Addr().String()
		}
		go func() {
			in, err := lns[i].Accept()
			lns[i].Close()
			if err != nil {
				return
			}
			out, err := dialers[i].Dial("tcp", next)
			if err != nil {
				in.Close()
				return
			}
			join(in, out)
		}()
	}
	first := target
	if n > 1 {
		first = lns[1].Addr().String()
	}
	out, err := dialers[0].Dial("tcp", first)
	if err != nil {
		app.Write([]byte{5, 1, 0, 1, 0, 0, 0, 0, 0, 0})
		for _, l := range lns[1:] {
			l.Close()
		}
		return
	}
	if _, err := app.Write([]byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		out.Close()
		return
	}
	join(app, out)
}

// readSOCKS5 reads a SOCKS5 CONNECT to an IPv4 target, with or without a
// username and password (as tor sends a chain's arguments); the reference
// takes its per-hop arguments from its configuration and ignores them.
func readSOCKS5(c net.Conn) (string, error) {
	var b [262]byte
	if _, err := io.ReadFull(c, b[:2]); err != nil || b[0] != 5 {
		return "", errors.New("not SOCKS5")
	}
	methods := b[:b[1]]
	if _, err := io.ReadFull(c, methods); err != nil {
		return "", err
	}
	if bytes.IndexByte(methods, 2) >= 0 {
		if _, err := c.Write([]byte{5, 2}); err != nil {
			return "", err
		}
		if _, err := io.ReadFull(c, b[:2]); err != nil { // VER ULEN
			return "", err
		}
		ulen := int(b[1])
		if _, err := io.ReadFull(c, b[:ulen+1]); err != nil { // UNAME PLEN
			return "", err
		}
		if _, err := io.ReadFull(c, b[:b[ulen]]); err != nil { // PASSWD
			return "", err
		}
		if _, err := c.Write([]byte{1, 0}); err != nil {
			return "", err
		}
	} else if _, err := c.Write([]byte{5, 0}); err != nil {
		return "", err
	}
	if _, err := io.ReadFull(c, b[:10]); err != nil || b[1] != 1 || b[3] != 1 {
		return "", errors.New("want CONNECT to an IPv4 address")
	}
	ip := net.IP(b[4:8])
	port := int(b[8])<<8 | int(b[9])
	return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
}

// copyBytes is how the relay moves bytes: io.Copy, which splices between
// TCP connections on Linux, or, with the "loop" argument, the textbook loop
// of read and write through a 32 KiB buffer, as relays in most languages
// (and Go code on wrapped connections) do.
var copyBytes = func(dst, src net.Conn) { io.Copy(dst, src) }

func copyLoop(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// setCopy picks the copy from a helper's last argument.
func setCopy(mode string) error {
	switch mode {
	case "splice":
	case "loop":
		copyBytes = copyLoop
	default:
		return fmt.Errorf("copy mode %q is neither loop nor splice", mode)
	}
	return nil
}

// join copies both ways until either side ends, then closes both.
func join(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		copyBytes(a, b)
		a.Close()
		b.Close()
		close(done)
	}()
	copyBytes(b, a)
	a.Close()
	b.Close()
	<-done
}

// runRelayServer is the reference's server side. args are the cookie file
// it writes for its PTs, and the sink's Extended ORPort and cookie file. It
// reads "forward TARGET" lines (TARGET "tor" for the sink); for each it
// listens as an Extended ORPort, prints "LISTEN ADDR", and forwards every
// stream to TARGET. A "plain TARGET" line makes a plain TCP forwarder: the
// public listener of -ref-public.
//
// A stream's USERADDR is either a connection this relay dialled into an
// inner PT (looked up exactly: it carries on that connection's client) or,
// from the outermost PT, the client itself. The sink hears the client's
// address, as tor must.
func runRelayServer(stdin io.Reader, args []string) error {
	if len(args) != 4 {
		return errors.New("usage: relay-server PTCOOKIE SINKEXT SINKCOOKIE loop|splice")
	}
	if err := setCopy(args[3]); err != nil {
		return err
	}
	cookie, err := extorport.WriteCookieFile(args[0])
	if err != nil {
		return err
	}
	sinkExt, sinkCookie := args[1], args[2]
	var dialled sync.Map // local ip:port of a connection into a PT -> client ip:port
	handle := func(in net.Conn, target string) {
		meta, err := extorport.ServerHandshake(in, extorport.ServerConfig{Cookie: cookie})
		if err != nil {
			in.Close()
			return
		}
		client := meta.UserAddr
		if c, ok := dialled.LoadAndDelete(meta.UserAddr); ok {
			client = c.(string)
		}
		out, err := dialOnward(target, sinkExt, sinkCookie, extorport.Meta{UserAddr: client, Transport: meta.Transport})
		if err != nil {
			in.Close()
			return
		}
		if target != "tor" {
			dialled.Store(out.LocalAddr().String(), client)
		}
		if extorport.Okay(in) != nil {
			in.Close()
			out.Close()
			return
		}
		join(in, out)
	}
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		line := sc.Text()
		plain := false
		if t, ok := strings.CutPrefix(line, "plain "); ok {
			line, plain = "forward "+t, true
		}
		target, ok := strings.CutPrefix(line, "forward ")
		if !ok {
			return fmt.Errorf("bad command %q", sc.Text())
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		go serveEach(ln, func(in net.Conn) {
			if !plain {
				handle(in, target)
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				return
			}
			join(in, out)
		})
		fmt.Printf("LISTEN %s\n", ln.Addr())
	}
	return nil
}

// dialOnward opens a server-side stream's next connection: the next PT
// server's listener, or for target "tor" the sink's Extended ORPort with
// meta. On error the connection is a nil interface: extorport.Dial's nil
// *net.TCPConn, kept in a net.Conn, would not be, and closing it panicked
// the relay when the sink could not be reached (out of descriptors).
func dialOnward(target, sinkExt, sinkCookie string, meta extorport.Meta) (net.Conn, error) {
	if target != "tor" {
		return net.Dial("tcp", target)
	}
	c, err := extorport.Dial(context.Background(), sinkExt, extorport.ClientConfig{CookiePath: sinkCookie}, meta)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// serveEach runs handle in a goroutine of its own for every connection ln
// accepts, until ln closes (the helper exits with its listeners open). A
// failed accept that is not the listener's end (out of descriptors, most
// often) is waited out, from 5 ms doubling up to 1 s, as net/http does:
// returning would leave the listener open and deaf for good.
func serveEach(ln net.Listener, handle func(net.Conn)) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go handle(c)
	}
}
