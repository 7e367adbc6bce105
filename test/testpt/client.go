package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
	"golang.org/x/net/proxy"
)

func runClient(life *lifecycle) error {
	info, err := pt.ClientSetup(nil)
	if err != nil {
		return err
	}
	dial := func(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 10*time.Second) }
	if info.ProxyURL != nil {
		if !*acceptProxy || info.ProxyURL.Scheme != "socks5" {
			return pt.ProxyError("testpt does not support proxies")
		}
		d, err := proxy.FromURL(info.ProxyURL, proxy.Direct)
		if err != nil {
			return pt.ProxyError(err.Error())
		}
		dial = func(addr string) (net.Conn, error) { return d.Dial("tcp", addr) }
		pt.ProxyDone()
	}
	dir, err := pt.MakeStateDir()
	if err != nil {
		return err
	}
	rlog := &requestLog{path: filepath.Join(dir, "requests.log")}
	if *mode == "garbage" {
		for _, l := range garbageLines {
			fmt.Fprintln(pt.Stdout, l)
		}
	}
	var listeners []*pt.SocksListener
	var conns sync.WaitGroup
	for _, name := range offered(info.MethodNames) {
		ln, err := pt.ListenSocks("tcp", "127.0.0.1:0")
		if err != nil {
			pt.CmethodError(name, err.Error())
			continue
		}
		listeners = append(listeners, ln)
		pt.Cmethod(name, ln.Version(), ln.Addr())
		go acceptClients(ln, name, dial, rlog, &conns)
	}
	pt.CmethodsDone()
	afterDone(life)
	life.run(func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}, &conns)
	return nil
}

func acceptClients(ln *pt.SocksListener, method string, dial func(string) (net.Conn, error), rlog *requestLog, conns *sync.WaitGroup) {
	for {
		conn, err := ln.AcceptSocks()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Temporary() {
				continue
			}
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			handleClient(conn, method, dial, rlog)
		}()
	}
}

func handleClient(conn *pt.SocksConn, method string, dial func(string) (net.Conn, error), rlog *requestLog) {
	defer conn.Close()
	rlog.add(method, conn.Req.Target, encodeArgs(conn.Req.Args))
	v, ok := conn.Req.Args.Get("key")
	key, err := parseKey(v, ok)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpt:", err)
		conn.Reject()
		return
	}
	if *mode == "ignore-target" {
		// Like meek or snowflake, which reach their own front or broker:
		// the target is never dialled.
		if conn.Grant(nil) == nil {
			io.Copy(io.Discard, conn)
		}
		return
	}
	remote, err := dial(conn.Req.Target)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpt: dial:", err)
		conn.RejectReason(replyFor(err))
		return
	}
	if _, err := remote.Write([]byte(header(method, key))); err != nil {
		remote.Close()
		conn.Reject()
		return
	}
	if err := conn.Grant(nil); err != nil {
		remote.Close()
		return
	}
	relay(conn.Conn, remote, remote, key)
}

func replyFor(err error) byte {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return pt.SocksRepConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return pt.SocksRepNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return pt.SocksRepHostUnreachable
	case errors.As(err, &ne) && ne.Timeout():
		return pt.SocksRepTTLExpired
	}
	return pt.SocksRepGeneralFailure
}

// requestLog appends one line per SOCKS request.
type requestLog struct {
	mu   sync.Mutex
	path string
}

func (r *requestLog) add(method, target, args string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpt: request log:", err)
		return
	}
	fmt.Fprintf(f, "%s %s %s\n", method, target, args)
	f.Close()
}
