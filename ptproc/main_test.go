package ptproc

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// helperEnv names the fake child's mode: the test binary re-executed as a
// PT (the os/exec exec_test.go helperCommand pattern).
const helperEnv = "PTPROC_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helper(mode))
	}
	goleak.VerifyTestMain(m)
}

// waitStdin blocks until the parent closes our stdin (A3).
func waitStdin() { _, _ = io.Copy(io.Discard, os.Stdin) }

func say(lines ...string) {
	for _, l := range lines {
		fmt.Fprint(os.Stdout, l+"\n")
	}
}

// helper is the fake PT; its exit status is the process's.
func helper(mode string) int {
	switch mode {
	case "client":
		say("VERSION 1",
			"CMETHOD a socks5 127.0.0.1:1111",
			"CMETHOD b socks4 [::1]:2222",
			"CMETHOD-ERROR c no such transport here",
			"CMETHODS DONE",
			`LOG SEVERITY=notice MESSAGE="hello\tworld \"q\" \303\251"`,
			"STATUS TRANSPORT=a CONNECT=Success",
			"CMETHOD late socks5 127.0.0.1:3333")
		waitStdin()
		say("STATUS STDIN=EOF")
	case "server":
		say("VERSION 1",
			`SMETHOD obfs4 127.0.0.1:1234 ARGS:cert=abc\,def,iat-mode=0`,
			"SMETHOD obfs3 127.0.0.1:1 ARGS:",
			"SMETHOD plain [::1]:7",
			"SMETHOD-ERROR scramblesuit server not supported",
			"CMETHOD wrong socks5 127.0.0.1:9",
			"SMETHODS DONE")
		waitStdin()
	case "env-error":
		say("ENV-ERROR no TOR_PT_FOO given")
		waitStdin() // A25: wait for stdin EOF rather than exit at once
	case "version-error":
		say("VERSION-ERROR no-version")
		return 1
	case "bad-version":
		say("VERSION 2")
		waitStdin()
	case "before-version":
		say("CMETHOD a socks5 127.0.0.1:1", "VERSION 1", "CMETHODS DONE")
		waitStdin()
	case "exit-early":
		say("VERSION 1")
		fmt.Fprintln(os.Stderr, "fatal: cannot frobnicate")
		return 3
	case "hang":
		say("VERSION 1")
		waitStdin()
	case "close-stdout":
		say("VERSION 1")
		os.Stdout.Close()
		waitStdin()
	case "proxy-ok":
		say("VERSION 1", "PROXY DONE", "CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
		waitStdin()
	case "proxy-missing":
		say("VERSION 1", "CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
		waitStdin()
	case "proxy-error":
		say("VERSION 1", "PROXY-ERROR cannot reach socks5://127.0.0.1:9")
		waitStdin()
	case "garbage":
		say("", "   ", "\x00VERSION 1", "VERSION\xff 1", "ÜBER 1", "FOO bar baz",
			"VERSION 1",
			"CMETHOD",
			"CMETHOD bad-name socks5 127.0.0.1:1",
			"CMETHOD x socks9 127.0.0.1:1",
			"CMETHOD y socks5 localhost:1",
			"CMETHOD z socks5 127.0.0.1:0",
			"CMETHOD w socks5 127.0.0.1:1 caf\xc3\xa9",
			"CMETHOD-ERROR",
			"CMETHOD-ERROR v \x01bell",
			"SMETHOD wrongrole 127.0.0.1:1",
			"PROXY DONE",
			`LOG SEVERITY=notice MESSAGE="caf\303\251 \001"`,
			"LOG SEVERITY=loud MESSAGE=x",
			"LOG garbage",
			"STATUS caf\xc3\xa9",
			strings.Repeat("X", 100<<10),
			"CMETHOD good socks5 127.0.0.1:5",
			"CMETHODS DONE")
		waitStdin()
	case "stderr-spam":
		say("VERSION 1")
		line := strings.Repeat("e", 99) + "\n"
		for range (1 << 20) / len(line) {
			io.WriteString(os.Stderr, line)
		}
		say("CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
		waitStdin()
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
		say("VERSION 1", "CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
		for {
			time.Sleep(time.Hour)
		}
	case "printenv":
		fi, err := os.Stdin.Stat()
		if err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
			say("ENV-ERROR stdin is not a pipe")
			waitStdin()
			return 1
		}
		say("VERSION 1", "CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
		for _, kv := range os.Environ() {
			say("STATUS ENV " + kv)
		}
		say("STATUS END")
		waitStdin()
		say("STATUS STDIN=EOF")
	case "order-exit", "order-stay", "order-hang":
		return orderHelper(mode)
	case "panic":
		say("VERSION 1", "CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
		for i := range 30 {
			fmt.Fprintf(os.Stderr, "noise before the crash %d\n", i)
		}
		fmt.Fprint(os.Stderr, panicReport)
		for i := range 15 { // a deep stack: the cause scrolls out of the tail
			fmt.Fprintf(os.Stderr, "main.deep%d(...)\n\t/build/obfs4proxy/deep.go:%d +0x1\n", i, i)
		}
		return 2
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		return 2
	}
	return 0
}

// panicReport imitates what obfs4proxy 0.0.14 prints when it panics under
// iat-mode=2: the cause first, then a stack longer than what StartError
// quotes.
const panicReport = `panic: BUG: Write(), iat length was 0

goroutine 42 [running]:
gitlab.com/yawning/obfs4.git/transports/obfs4.(*obfs4Conn).Write(0xc000123456, {0xc000200000, 0x5a8, 0x8000})
	/build/obfs4proxy/transports/obfs4/obfs4.go:590 +0x5c5
io.copyBuffer({0x7f0c, 0xc000123456}, {0x7f0d, 0xc000654321}, {0x0, 0x0, 0x0})
	/usr/lib/go/src/io/io.go:432 +0x1d5
main.copyLoop.func1()
	/build/obfs4proxy/obfs4proxy/obfs4proxy.go:297 +0x7a
created by main.copyLoop in goroutine 41
	/build/obfs4proxy/obfs4proxy/obfs4proxy.go:295 +0x123
`

// orderHelper reports, as STATUS lines in the order it sees them, its
// stdin's EOF ("EOF") and SIGTERM ("SIGTERM <unix ns>"), and exits 0 on
// SIGTERM. order-exit exits on EOF too; order-stay does not; order-hang
// never finishes configuring ("STATUS HANG" says it waits).
func orderHelper(mode string) int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if mode == "order-hang" {
		say("VERSION 1", "STATUS HANG")
	} else {
		say("VERSION 1", "CMETHOD a socks5 127.0.0.1:1", "CMETHODS DONE")
	}
	eof := make(chan struct{})
	go func() { waitStdin(); close(eof) }()
	for {
		select {
		case <-eof:
			say("STATUS EOF")
			if mode != "order-stay" {
				return 0
			}
			eof = nil
		case <-term:
			say(fmt.Sprintf("STATUS SIGTERM %d", time.Now().UnixNano()))
			return 0
		}
	}
}
