package test

import (
	"bufio"
	"bytes"
	"io"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// managedRun is ptcombiner-client run as tor runs it, read by hand: tor's
// TOR_PT_CLIENT_TRANSPORTS may hold names (such as "*") that ptproc, a
// strict parent, would not send.
type managedRun struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  []string // stdout up to CMETHODS DONE
	mu     sync.Mutex
	stderr bytes.Buffer
}

func (m *managedRun) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stderr.Write(p)
}

func (m *managedRun) stderrText() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stderr.String()
}

// startManagedClient starts the client with TOR_PT_CLIENT_TRANSPORTS=asked
// and reads its stdout up to CMETHODS DONE; the client ends with the test.
func startManagedClient(t *testing.T, asked string, flags ...string) *managedRun {
	t.Helper()
	m := &managedRun{cmd: exec.Command(bin("ptcombiner-client"), flags...)}
	m.cmd.Env = append(m.cmd.Environ(),
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION="+t.TempDir(),
		"TOR_PT_EXIT_ON_STDIN_CLOSE=1",
		"TOR_PT_CLIENT_TRANSPORTS="+asked,
	)
	m.cmd.Stderr = m
	var err error
	if m.stdin, err = m.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	t.Cleanup(func() {
		m.stdin.Close()
		select {
		case <-drained:
		case <-time.After(30 * time.Second):
			m.cmd.Process.Kill()
			<-drained
			t.Errorf("ptcombiner-client still runs 30 s after its stdin closed")
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(drained)
		sc := bufio.NewScanner(out)
		for reading := true; sc.Scan(); {
			if reading {
				m.lines = append(m.lines, sc.Text())
				reading = sc.Text() != "CMETHODS DONE"
				if !reading {
					close(done)
				}
			}
		}
		if len(m.lines) == 0 || m.lines[len(m.lines)-1] != "CMETHODS DONE" {
			close(done)
		}
		m.cmd.Wait()
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("no CMETHODS DONE within 60 s; stderr:\n%s", m.stderrText())
	}
	return m
}

// cmethods returns the names of the CMETHOD lines and every *-ERROR line.
func (m *managedRun) cmethods() (names, errs []string) {
	for _, l := range m.lines {
		f := strings.Fields(l)
		switch {
		case len(f) > 1 && f[0] == "CMETHOD":
			names = append(names, f[1])
		case len(f) > 0 && strings.HasSuffix(f[0], "-ERROR"):
			errs = append(errs, l)
		}
	}
	sort.Strings(names)
	return names, errs
}

// TOR_PT_CLIENT_TRANSPORTS=* asks for every configured chain and method;
// unknown names get no CMETHOD-ERROR (pt-spec 3.2.2), and the log says at
// info which names were asked for and which were ignored.
func TestClientRequestedTransports(t *testing.T) {
	for _, tc := range []struct {
		asked   string
		want    []string
		ignored string // in the log's ignored=
	}{
		{"*", []string{"t2", "t3", "test"}, "ignored=[]"},
		{"t2,nosuch,obfs9", []string{"t2"}, "ignored=\"[nosuch obfs9]\""},
	} {
		t.Run(tc.asked, func(t *testing.T) {
			m := startManagedClient(t, tc.asked, testpFlags()...)
			names, errs := m.cmethods()
			if strings.Join(names, ",") != strings.Join(tc.want, ",") || len(errs) != 0 {
				t.Errorf("TOR_PT_CLIENT_TRANSPORTS=%s: CMETHODs %q, errors %q; want %q and no errors\nstdout: %q",
					tc.asked, names, errs, tc.want, m.lines)
			}
			log := m.stderrText()
			var line string
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, "transports tor asked for") {
					line = l
				}
			}
			if !strings.Contains(line, "level=INFO") || !strings.Contains(line, tc.ignored) {
				t.Errorf("no info line naming the ignored transports (%s); stderr:\n%s", tc.ignored, log)
			}
		})
	}
}
