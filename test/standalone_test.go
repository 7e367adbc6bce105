package test

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// startStandalone runs a combiner without tor and returns the lines it
// prints before it settles (one per listener).
func startStandalone(t *testing.T, n int, path string, args ...string) []string {
	t.Helper()
	lines, _, _ := launchStandalone(t, n, path, args...)
	return lines
}

// launchStandalone is startStandalone that also gives the program's
// stderr (its log), readable while it runs, and the program.
func launchStandalone(t *testing.T, n int, path string, args ...string) ([]string, *syncBuffer, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(path, args...)
	// A TMPDIR of its own, to see that the program leaves nothing there
	// (ptcombiner-client without --state-dir keeps its children's state
	// in a temporary directory).
	tmp := t.TempDir()
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, _ := cmd.StdoutPipe()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	standaloneExits.Store(cmd, exited)
	t.Cleanup(func() {
		// Ended as an operator or a service manager ends it; a program a
		// test killed itself has nothing to say about its cleanup.
		if cmd.Process.Signal(syscall.SIGTERM) == nil {
			select {
			case <-exited:
				ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
				if ws.Signaled() && ws.Signal() == syscall.SIGKILL {
					break // killed by the test before the SIGTERM reached it
				}
				if left, _ := os.ReadDir(tmp); len(left) > 0 {
					t.Errorf("%s left %d entries in its TMPDIR after SIGTERM (%s...)", filepath.Base(path), len(left), left[0].Name())
				}
			case <-time.After(eventCeiling):
				t.Errorf("%s did not exit within %v of SIGTERM", filepath.Base(path), eventCeiling)
				cmd.Process.Kill()
				<-exited
			}
		}
		standaloneExits.Delete(cmd)
		if t.Failed() {
			t.Logf("%s stderr:\n%s", path, tail(stderr.String(), 20))
		}
	})
	sc := bufio.NewScanner(out)
	var lines []string
	for len(lines) < n && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < n {
		t.Fatalf("%s printed %q and stopped", path, lines)
	}
	go io.Copy(io.Discard, out)
	return lines, stderr, cmd
}

// standaloneExits holds, for each program launchStandalone started, a
// channel closed once it has exited (launchStandalone waits for it: a test
// waits with waitExited, never with cmd.Wait).
var standaloneExits sync.Map // *exec.Cmd -> chan struct{}

// waitExited waits until cmd, started by launchStandalone, has exited.
func waitExited(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	ch, _ := standaloneExits.Load(cmd)
	select {
	case <-ch.(chan struct{}):
	case <-time.After(eventCeiling):
		t.Fatalf("%s did not exit within %v", filepath.Base(cmd.Path), eventCeiling)
	}
}

// Without tor: ptcombiner-server forwards a chain to a plain TCP service,
// and ptcombiner-client offers it as a plain TCP tunnel and as SOCKS5.
func TestStandalone(t *testing.T) {
	echo := echoServer(t)
	plugin := "test=" + bin("testpt")
	// State dirs given relative to the working directory: a PT is given
	// them absolute (PT 1.0's TOR_PT_STATE_LOCATION).
	srvState, cliState := relativeDir(t), relativeDir(t)
	srv := startStandalone(t, 1, bin("ptcombiner-server"), "--plugin", plugin, "--chain", "t2=test|test",
		"--listen", "t2=127.0.0.1:0", "--forward", echo, "--state-dir", srvState, "--config",
		writeConfig(t, "ServerTransportOptions t2 0.key=5 1.key=6\n"))
	f := strings.Fields(srv[0]) // CHAIN t2 <addr> ARGS <args>
	if len(f) != 5 || f[0] != "CHAIN" {
		t.Fatalf("server printed %q", srv[0])
	}
	public, args := f[2], f[4]
	if args != "0.key=5;1.key=6" {
		t.Errorf("published args %q", args)
	}
	cli := startStandalone(t, 2, bin("ptcombiner-client"), "--plugin", plugin, "--chain", "t2=test|test",
		"--tunnel", "127.0.0.1:0=t2@"+public, "--args", "t2="+args, "--listen", "t2=127.0.0.1:0", "--state-dir", cliState)
	var tunnel, socks string
	for _, l := range cli {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[0] == "TUNNEL":
			tunnel = f[2]
		case len(f) >= 3 && f[0] == "SOCKS5":
			socks = f[2]
		}
	}
	raw, err := net.Dial("tcp", tunnel)
	if err != nil {
		t.Fatalf("tunnel %q: %v", tunnel, err)
	}
	if err := roundTrip(t, raw.(*net.TCPConn), 1<<20); err != nil {
		t.Fatalf("through the tunnel: %v", err)
	}
	a, _ := net.ResolveTCPAddr("tcp", socks)
	c := &combiner{methods: map[string]ptproc.Cmethod{"t2": {Addr: a}}}
	parsed, _ := metadata.ParseClientArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.dial(ctx, "t2", public, parsed)
	if err != nil {
		t.Fatalf("through SOCKS: %v", err)
	}
	if err := roundTrip(t, conn, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// relativeDir is a new temporary directory named relative to the working
// directory.
func relativeDir(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

// Without tor and without anything to do, each program says what it needs.
func TestStandaloneUsage(t *testing.T) {
	for _, tc := range []struct {
		path string
		args []string
		want string
	}{
		{bin("ptcombiner-client"), nil, "no --listen or --tunnel given"},
		{bin("ptcombiner-client"), []string{"--tunnel", "nonsense"}, "want ADDR=ALIAS@BRIDGE"},
		{bin("ptcombiner-server"), []string{"--listen", "x=127.0.0.1:0"}, "--forward HOST:PORT is required"},
		{bin("ptcombiner-server"), []string{"--listen", "x=127.0.0.1:0", "--forward", "127.0.0.1:1"}, "--state-dir DIR is required"},
		// In-process obfs4 keeps its keys in the state directory as obfs4proxy does.
		{bin("ptcombiner-server"), []string{"--builtin", "obfs4", "--listen", "obfs4=127.0.0.1:0", "--forward", "127.0.0.1:1"},
			"--state-dir DIR is required without tor: the hops keep their keys there (obfs4's cert), in-process (--builtin)"},
		// A session's stream window (docs/free.md, "Stream window").
		{bin("ptcombiner-client"), []string{"--tunnel", "127.0.0.1:0=t@127.0.0.1:1", "--stream-window", "4096"}, "--stream-window without --proxy"},
		{bin("ptcombiner-client"), []string{"--proxy", "127.0.0.1:0=t@127.0.0.1:1", "--stream-window", "16"}, "--stream-window: free: a stream window of 16 KiB: want 64 to 65536 KiB"},
		{bin("ptcombiner-server"), []string{"--listen", "x=127.0.0.1:0", "--forward", "127.0.0.1:1", "--stream-window", "4096"}, "--stream-window needs --free"},
		{bin("ptcombiner-server"), []string{"--listen", "x=127.0.0.1:0", "--free", "--stream-window", "100000"}, "want 64 to 65536 KiB"},
		{bin("ptcombiner-client"), []string{"--tunnel", "127.0.0.1:0=t@127.0.0.1:1", "--session-window", "1024"}, "--session-window without --proxy"},
		{bin("ptcombiner-client"), []string{"--proxy", "127.0.0.1:0=t@127.0.0.1:1", "--session-window", "16"}, "--session-window: free: a session window of 16 KiB: want 64 to 1048576 KiB"},
		{bin("ptcombiner-server"), []string{"--listen", "x=127.0.0.1:0", "--forward", "127.0.0.1:1", "--session-window", "1024"}, "--session-window needs --free"},
	} {
		out, err := exec.Command(tc.path, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%s %q: %v, %q; want %q", tc.path, tc.args, err, out, tc.want)
		}
	}

}
