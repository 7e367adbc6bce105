package chain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// stopCeiling bounds waits that end promptly when the code is right: far
// below the start timeout (10 minutes) that would otherwise end them.
const (
	stopCeiling      = 30 * time.Second
	longStartTimeout = 10 * time.Minute
)

// scriptChild is a shell-script PT offering the method x in either role.
// It writes its pid to pidFile first, then records in orderFile what ended
// it: "stdin-eof" (it exits on stdin EOF) or "sigterm".
type scriptChild struct {
	path, pidFile, orderFile string
}

// methodLines are the configuration lines of a script child that finishes
// configuring, in the role its environment says.
const methodLines = `if [ -n "$TOR_PT_CLIENT_TRANSPORTS" ]; then
	echo 'CMETHOD x socks5 127.0.0.1:1'; echo 'CMETHODS DONE'
else
	echo 'SMETHOD x 127.0.0.1:1'; echo 'SMETHODS DONE'
fi
`

// newScriptChild writes a script that prints VERSION, then body, then waits
// for its stdin's EOF.
func newScriptChild(t *testing.T, body string) *scriptChild {
	t.Helper()
	dir := t.TempDir()
	c := &scriptChild{
		path:      filepath.Join(dir, "pt.sh"),
		pidFile:   filepath.Join(dir, "pid"),
		orderFile: filepath.Join(dir, "order"),
	}
	// With cat in the foreground, sh runs the trap only once cat has ended:
	// a SIGTERM that came first is recorded instead of the EOF.
	script := fmt.Sprintf(`#!/bin/sh
trap 'echo sigterm >>%[2]q; exit 0' TERM
echo $$ >%[1]q.tmp && mv %[1]q.tmp %[1]q
echo 'VERSION 1'
%[3]s
cat >/dev/null
echo stdin-eof >>%[2]q
`, c.pidFile, c.orderFile, body)
	if err := os.WriteFile(c.path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return c
}

// config offers x from the script.
func (c *scriptChild) config(t *testing.T) *Config {
	t.Helper()
	var cfg Config
	if err := cfg.AddPluginFlag("x=" + c.path); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return &cfg
}

// waitPid waits for the script's pid: it has been launched.
func (c *scriptChild) waitPid(t *testing.T) int {
	t.Helper()
	deadline := time.Now().Add(stopCeiling)
	for {
		b, err := os.ReadFile(c.pidFile)
		if err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatalf("pid file: %v", err)
			}
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child did not start within %v", stopCeiling)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkEnded checks that the child is gone and was ended by stdin EOF
// alone, never by SIGTERM (PROTOCOLS.md A22).
func (c *scriptChild) checkEnded(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("child %d still exists: kill(0) = %v", pid, err)
	}
	b, err := os.ReadFile(c.orderFile)
	if err != nil {
		t.Fatalf("the child recorded no end: %v", err)
	}
	if got := string(b); got != "stdin-eof\n" {
		t.Errorf("the child was ended by %q, want stdin EOF alone", strings.Fields(got))
	}
}

// starter runs one role's Start in the background and ends it.
type starter struct {
	start func(ctx context.Context) error // the role's Start; its error or the chain's
	close func()
}

func clientStarter(cfg *Config, dir string, logs *logBuf) starter {
	cli := NewClient(ClientOptions{Config: cfg, StateDir: dir, Logger: newLogger(logs), StartTimeout: longStartTimeout})
	return starter{
		start: func(ctx context.Context) error { return cli.Start(ctx, []string{"x"})["x"] },
		close: func() { cli.Close() },
	}
}

func serverStarter(cfg *Config, dir string, logs *logBuf) starter {
	srv := NewServer(ServerOptions{Config: cfg, StateDir: dir, Logger: newLogger(logs), StartTimeout: longStartTimeout})
	return starter{
		start: func(ctx context.Context) error {
			pubs, err := srv.Start(ctx, []Bind{{Alias: "x", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
			if err != nil {
				return err
			}
			return pubs[0].Err
		},
		close: func() { srv.Close() },
	}
}

var starters = map[string]func(cfg *Config, dir string, logs *logBuf) starter{
	"client": clientStarter,
	"server": serverStarter,
}

// Issue 12 item 4: the end of the program aborts a child's hanging start at
// once, not after the start timeout; cancelling Start's ctx (what the
// commands do on SIGTERM or stdin EOF) and Close (during Start) both do.
// The child is ended by stdin EOF, as A22 asks.
func TestStartAbortedWhileChildHangs(t *testing.T) {
	for role, newStarter := range starters {
		for _, how := range []string{"cancel", "close"} {
			t.Run(role+"/"+how, func(t *testing.T) {
				defer goleak.VerifyNone(t)
				child := newScriptChild(t, "") // never prints *METHODS DONE
				logs := &logBuf{}
				st := newStarter(child.config(t), t.TempDir(), logs)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- st.start(ctx) }()
				pid := child.waitPid(t)
				closed := make(chan struct{})
				if how == "cancel" {
					cancel()
				} else {
					go func() { st.close(); close(closed) }()
				}
				select {
				case err := <-done:
					if err == nil {
						t.Errorf("Start succeeded with a child that never finished configuring")
					}
					t.Logf("Start: %v", err)
				case <-time.After(stopCeiling):
					t.Fatalf("Start did not return within %v of the %s (start timeout %v)", stopCeiling, how, longStartTimeout)
				}
				if how == "cancel" {
					st.close()
				} else {
					<-closed // Start has returned: so has the start Close waits for
				}
				child.checkEnded(t, pid)
				if t.Failed() {
					t.Logf("logs: %s", logs.digest(15))
				}
			})
		}
	}
}

// Issue 12 item 5: Close ends a running child by closing its stdin first;
// a child that exits on it never sees SIGTERM.
func TestCloseEndsChildByStdinFirst(t *testing.T) {
	for role, newStarter := range starters {
		t.Run(role, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			child := newScriptChild(t, methodLines)
			logs := &logBuf{}
			st := newStarter(child.config(t), t.TempDir(), logs)
			if err := st.start(context.Background()); err != nil {
				st.close()
				t.Fatalf("Start: %v", err)
			}
			pid := child.waitPid(t)
			st.close()
			child.checkEnded(t, pid)
		})
	}
}

// Issue 12 item 8: a child that crashes is restarted, and the warning and
// the Event carry its last stderr lines, a Go panic's cause first.
func TestCrashWarningQuotesStderr(t *testing.T) {
	defer goleak.VerifyNone(t)
	const cause = "panic: BUG: Write(), iat length was 0"
	crash := methodLines + `printf '%s\n' '` + cause + `' '' 'goroutine 42 [running]:' \
	'gitlab.com/yawning/obfs4.git/transports/obfs4.(*obfs4Conn).Write(0xc0001, {0xc0002, 0x5a8, 0x8000})' \
	'	/build/obfs4/obfs4.go:590 +0x5c5' >&2
exit 2
`
	child := newScriptChild(t, crash)
	logs := &logBuf{}
	events := make(chan Event, 100)
	cli := NewClient(ClientOptions{Config: child.config(t), StateDir: t.TempDir(), Logger: newLogger(logs),
		StartTimeout: longStartTimeout, OnEvent: func(e Event) {
			select {
			case events <- e:
			default:
			}
		}})
	defer cli.Close()
	cli.Start(context.Background(), []string{"x"}) // fails or not, as the crash races the check
	var exited Event
	deadline := time.After(stopCeiling)
	for exited.Kind != EventExited {
		select {
		case exited = <-events:
		case <-deadline:
			t.Fatalf("no %q event within %v; logs: %s", EventExited, stopCeiling, logs.digest(15))
		}
	}
	if exited.Err == nil || !strings.Contains(exited.Err.Error(), "exit status 2") {
		t.Errorf("Event.Err = %v, want exit status 2", exited.Err)
	}
	if len(exited.Stderr) < 3 || exited.Stderr[0] != cause || exited.Stderr[1] != "goroutine 42 [running]:" {
		t.Errorf("Event.Stderr = %q, want the panic and its stack", exited.Stderr)
	}
	cli.Close() // the log is complete once the watch loop has returned
	var warning string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "PT program exited; restarting it") {
			warning = line
			break
		}
	}
	if !strings.Contains(warning, cause) || !strings.Contains(warning, "goroutine 42 [running]:") ||
		!strings.Contains(warning, "obfs4Conn).Write") {
		t.Errorf("the warning does not quote the child's stderr: %q", warning)
	}
}
