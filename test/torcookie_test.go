package test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
)

// firstLine runs ptcombiner-server as tor would with an Extended ORPort
// whose cookie file is cookiePath, and returns the first line on its stdout
// that ends the configuration phase (ENV-ERROR, SMETHOD-ERROR or SMETHODS
// DONE). It then closes the program's stdin and waits for it to exit.
func firstLine(t *testing.T, cookiePath string) string {
	t.Helper()
	cmd := exec.Command(bin("ptcombiner-server"), "--plugin", "test="+bin("testpt"), "--chain", "t2=test|test")
	cmd.Env = []string{
		"TOR_PT_MANAGED_TRANSPORT_VER=1", "TOR_PT_STATE_LOCATION=" + t.TempDir(), "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
		"TOR_PT_SERVER_TRANSPORTS=t2", "TOR_PT_SERVER_BINDADDR=t2-127.0.0.1:0", "TOR_PT_ORPORT=127.0.0.1:1",
		"TOR_PT_EXTENDED_SERVER_PORT=127.0.0.1:1", "TOR_PT_AUTH_COOKIE_FILE=" + cookiePath,
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "ENV-ERROR ") || strings.HasPrefix(l, "SMETHOD-ERROR ") || l == "SMETHODS DONE" {
				lines <- l
				return
			}
		}
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(30 * time.Second):
		t.Error("no ENV-ERROR and no SMETHODS DONE within 30 s")
	}
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Error("still running 10 s after tor closed its stdin")
	}
	return line
}

// A TOR_PT_AUTH_COOKIE_FILE that cannot be used (missing, a byte short, a
// byte long, a wrong header) fails every chain: ptcombiner-server says so at
// start, in an ENV-ERROR with the reason, rather than at each client's
// connection.
func TestServerBadTorCookie(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if _, err := extorport.WriteCookieFile(good); err != nil {
		t.Fatal(err)
	}
	content, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte // nil: no file
		want string
	}{
		{"missing", nil, "no such file or directory"},
		{"63 bytes", content[:63], "63 bytes, want 64"},
		{"65 bytes", append(append([]byte(nil), content...), 'x'), "longer than 64 bytes"},
		{"wrong header", append([]byte("! Extended ORPort Auth Cookie !\x0b"), content[32:]...), "missing header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if tc.data != nil {
				if err := os.WriteFile(path, tc.data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			line := firstLine(t, path)
			t.Log(line)
			if !strings.HasPrefix(line, "ENV-ERROR tor's Extended ORPort cookie is invalid: ") || !strings.Contains(line, tc.want) ||
				!strings.Contains(line, path) {
				t.Errorf("stdout: %q, want an ENV-ERROR that the cookie is invalid, naming %s and %q", line, path, tc.want)
			}
		})
	}
	if line := firstLine(t, good); line != "SMETHODS DONE" {
		t.Errorf("with a good cookie: %q, want SMETHODS DONE", line)
	}
}
