package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

func runServer(life *lifecycle) error {
	info, err := pt.ServerSetup(nil)
	if err != nil {
		return err
	}
	if *mode == "garbage" {
		for _, l := range garbageLines {
			fmt.Fprintln(pt.Stdout, l)
		}
	}
	var listeners []net.Listener
	var conns sync.WaitGroup
	for _, b := range info.Bindaddrs {
		if !offeredOne(b.MethodName) {
			continue
		}
		v, ok := b.Options.Get("key")
		key, err := parseKey(v, ok)
		if err != nil {
			pt.SmethodError(b.MethodName, err.Error())
			continue
		}
		delay := 0
		if d, ok := b.Options.Get("delay"); ok {
			if delay, err = strconv.Atoi(d); err != nil || delay < 0 {
				pt.SmethodError(b.MethodName, fmt.Sprintf("delay %q is not a number of milliseconds", d))
				continue
			}
		}
		report, _ := b.Options.Get("useraddr")
		if report != "" && report != "ip1" && report != "none" {
			pt.SmethodError(b.MethodName, fmt.Sprintf("useraddr %q is not ip1 or none", report))
			continue
		}
		ln, err := net.ListenTCP("tcp", b.Addr)
		if err != nil {
			pt.SmethodError(b.MethodName, err.Error())
			continue
		}
		listeners = append(listeners, ln)
		pt.SmethodArgs(b.MethodName, ln.Addr(), pt.Args{"key": {strconv.Itoa(int(key))}})
		go acceptServer(ln, b.MethodName, key, delay, report, &info, &conns)
	}
	pt.SmethodsDone()
	afterDone(life)
	life.run(func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}, &conns)
	return nil
}

func offeredOne(name string) bool { return len(offered([]string{name})) == 1 }

func acceptServer(ln *net.TCPListener, method string, key byte, delay int, report string, info *pt.ServerInfo, conns *sync.WaitGroup) {
	for {
		conn, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			handleServer(conn, method, key, delay, report, info)
		}()
	}
}

// useraddr is the USERADDR the server reports for conn: its remote address,
// or with report "ip1" its IP with port 1, as meek-server reports what its
// front says, or with "none" nothing, as snowflake's server does when its
// proxy gives no client IP.
func useraddr(conn *net.TCPConn, report string) string {
	switch report {
	case "ip1":
		return net.JoinHostPort(conn.RemoteAddr().(*net.TCPAddr).IP.String(), "1")
	case "none":
		return ""
	}
	return conn.RemoteAddr().String()
}

func handleServer(conn *net.TCPConn, method string, key byte, delay int, report string, info *pt.ServerInfo) {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	if err := readHeader(br, method, key); err != nil {
		fmt.Fprintln(os.Stderr, "testpt: refused a connection:", err)
		conn.Close()
		return
	}
	conn.SetReadDeadline(time.Time{})
	if delay > 0 {
		time.Sleep(time.Duration(rand.IntN(delay+1)) * time.Millisecond)
	}
	or, err := pt.DialOr(info, useraddr(conn, report), method)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpt: ORPort:", err)
		conn.Close()
		return
	}
	relay(or, conn, br, key)
}
