// Command testpt is the project's own small pluggable transport, for fast,
// deterministic tests and for `make demo` when no external PT is installed.
//
// It is a PT 1.0 program built on goptlib like lyrebird, with both sides in
// one binary (client mode when TOR_PT_CLIENT_TRANSPORTS is set). It offers
// every requested method whose name starts with "test" and ignores others.
//
// Its transform is visible on purpose. The client, after dialling its
// target, writes the header line "TESTPT1 <method> <key>\n" and then XORs
// every byte in both directions with the key (SOCKS argument key, 0-255,
// default 90). The server reads the header, refuses a method or key that is
// not its own (server option key, default 90; published as SMETHOD ARGS
// key=K like obfs4's cert), optionally waits a random time up to its option
// delay (milliseconds) before dialling the (Extended) ORPort, and undoes the
// XOR. A hop in the wrong place, or with the wrong key, fails at once. It
// reports the accepted connection's remote address as USERADDR, or, with its
// option useraddr=ip1, that IP with port 1 (as meek-server does), or with
// useraddr=none no USERADDR at all.
//
// Each client SOCKS request is appended to $TOR_PT_STATE_LOCATION/requests.log
// as "<method> <target> <args>", args encoded deterministically, so tests can
// see exactly what each hop was asked.
//
// -mode selects a failure for tests: env-error, version-error,
// exit-before-done, hang, garbage, nonascii-log, crash-after, and
// ignore-target: the client grants every SOCKS request without ever
// connecting to its target, as an indirect PT (meek, snowflake) does when
// it is not the last hop of a chain.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

const defaultKey = 90

var (
	mode        = flag.String("mode", "normal", "normal, env-error, version-error, exit-before-done, hang, garbage, nonascii-log, crash-after or ignore-target")
	crashAfter  = flag.Duration("crash-after", time.Second, "with -mode crash-after: exit with status 4 after this long")
	acceptProxy = flag.Bool("accept-proxy", false, "accept TOR_PT_PROXY (socks5 only) instead of PROXY-ERROR")
	stderrSpam  = flag.Int("stderr-spam", 0, "write this many lines to stderr at start")
)

func main() {
	flag.Parse()
	for i := 0; i < *stderrSpam; i++ {
		fmt.Fprintf(os.Stderr, "testpt: stderr line %d of %d, to prove the parent drains stderr\n", i+1, *stderrSpam)
	}
	life := newLifecycle()
	switch *mode {
	case "env-error":
		fmt.Fprintln(pt.Stdout, "ENV-ERROR testpt was asked to fail")
		life.waitExit(10 * time.Second)
		os.Exit(1)
	case "version-error":
		fmt.Fprintln(pt.Stdout, "VERSION-ERROR no-version")
		life.waitExit(10 * time.Second)
		os.Exit(1)
	case "exit-before-done":
		fmt.Fprintln(pt.Stdout, "VERSION 1")
		fmt.Fprintln(os.Stderr, "testpt: exiting before DONE, as asked")
		os.Exit(3)
	case "hang":
		fmt.Fprintln(pt.Stdout, "VERSION 1")
		life.waitExit(time.Hour)
		os.Exit(0)
	}
	var err error
	if os.Getenv("TOR_PT_CLIENT_TRANSPORTS") != "" {
		err = runClient(life)
	} else {
		err = runServer(life)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpt:", err)
		life.waitExit(10 * time.Second)
		os.Exit(1)
	}
}

// afterDone prints what the failure modes add once the methods are out.
func afterDone(life *lifecycle) {
	switch *mode {
	case "nonascii-log":
		fmt.Fprintf(pt.Stdout, "LOG SEVERITY=notice MESSAGE=\"caf\xc3\xa9 \xff raw bytes\"\n")
	case "crash-after":
		go func() {
			time.Sleep(*crashAfter)
			fmt.Fprintln(os.Stderr, "testpt: crashing, as asked")
			os.Exit(4)
		}()
	}
}

// garbageLines are malformed protocol lines for -mode garbage.
var garbageLines = []string{
	"CMETHOD test",
	"CMETHOD test socks5 notanaddress",
	"SMETHOD test 1.2.3.4:99999",
	"SMETHOD test 127.0.0.1:1 ARGS:k",
	"CMETHOD te\xffst socks5 127.0.0.1:1",
	"NOT A KEYWORD",
}

func offered(names []string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, "test") {
			out = append(out, n)
		}
	}
	return out
}

// lifecycle ends the program as PT 1.0 asks (pt-spec 3.4): stdin EOF when
// TOR_PT_EXIT_ON_STDIN_CLOSE=1 and SIGTERM at once; the first SIGINT closes
// the listeners and waits for open connections, a second ends at once.
type lifecycle struct {
	exit      chan struct{}
	drain     chan struct{}
	once      sync.Once
	drainOnce sync.Once
}

func newLifecycle() *lifecycle {
	l := &lifecycle{exit: make(chan struct{}), drain: make(chan struct{})}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		ints := 0
		for sig := range sigs {
			if sig == syscall.SIGINT && ints == 0 {
				ints++
				l.drainOnce.Do(func() { close(l.drain) })
				continue
			}
			l.end()
		}
	}()
	if os.Getenv("TOR_PT_EXIT_ON_STDIN_CLOSE") == "1" {
		go func() {
			buf := make([]byte, 256)
			for {
				if _, err := os.Stdin.Read(buf); err != nil {
					l.end()
					return
				}
			}
		}()
	}
	return l
}

func (l *lifecycle) end() { l.once.Do(func() { close(l.exit) }) }

func (l *lifecycle) waitExit(d time.Duration) {
	select {
	case <-l.exit:
	case <-time.After(d):
	}
}

// run waits for the end; on the first SIGINT it closes the listeners and
// waits for the connections (or a later end).
func (l *lifecycle) run(closeListeners func(), conns *sync.WaitGroup) {
	select {
	case <-l.exit:
	case <-l.drain:
		closeListeners()
		done := make(chan struct{})
		go func() { conns.Wait(); close(done) }()
		select {
		case <-done:
		case <-l.exit:
		}
	}
}
