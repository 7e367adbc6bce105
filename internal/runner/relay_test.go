package runner

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// captureStdout sends goptlib's output to a buffer for the test.
func captureStdout(t *testing.T) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	old := pt.Stdout
	pt.Stdout = &b
	t.Cleanup(func() { pt.Stdout = old })
	return &b
}

// A crash's STATUS line carries the child's last stderr lines, scrubbed.
func TestReportEventQuotesStderr(t *testing.T) {
	out := captureStdout(t)
	var cfg chain.Config
	if err := cfg.AddPluginFlag("obfs4=/usr/bin/obfs4proxy"); err != nil {
		t.Fatal(err)
	}
	ReportEvent(&cfg, []string{"obfs4"}, chain.Event{
		Program: "/usr/bin/obfs4proxy", Pid: 7, Kind: chain.EventExited, Err: errors.New("exit status 2"),
		Stderr:  []string{"panic: BUG: Write(), iat length was 0", "goroutine 42 [running]:", "peer 192.0.2.9:443"},
		Crashes: 1,
	})
	line := out.String()
	for _, want := range []string{
		"STATUS TRANSPORT=obfs4 CHILD=/usr/bin/obfs4proxy EVENT=exited CRASHES=1 PID=7",
		`STDERR="panic: BUG: Write(), iat length was 0 | goroutine 42 [running]: | peer [scrubbed]"`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("STATUS line %q lacks %q", line, want)
		}
	}
}

// Every severity reaches tor as the same severity.
func TestRelayChildLogSeverities(t *testing.T) {
	out := captureStdout(t)
	for _, sev := range []ptproc.Severity{ptproc.SeverityError, ptproc.SeverityWarning, ptproc.SeverityNotice,
		ptproc.SeverityInfo, ptproc.SeverityDebug} {
		out.Reset()
		RelayChildLog("obfs4proxy", sev, "hello")
		if want := "LOG SEVERITY=" + string(sev) + " MESSAGE=\"obfs4proxy: hello\"\n"; out.String() != want {
			t.Errorf("RelayChildLog(%s) = %q, want %q", sev, out.String(), want)
		}
	}
}
