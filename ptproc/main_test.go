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
	default:
		fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
		return 2
	}
	return 0
}
