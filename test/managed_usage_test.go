package test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ptLine is pt-spec 3.3's line: "Keyword[ SP args]", keywords of
// [A-Za-z0-9_-], args of any US-ASCII but NUL and LF (PROTOCOLS.md A8).
var ptLine = regexp.MustCompile(`^[A-Za-z0-9_-]+( [\x01-\x09\x0b-\x7f]*)?$`)

// Under tor, a bad flag, an unexpected argument, a bad --config, --help and
// --version leave on stdout only lines tor can parse: one ENV-ERROR with the
// reason. The help goes to stderr, and the program waits after the error
// (PROTOCOLS.md A25) until tor closes its stdin.
func TestManagedUsageErrors(t *testing.T) {
	for _, prog := range []string{"ptcombiner-client", "ptcombiner-server"} {
		for _, tc := range []struct {
			args       []string
			reason     string // in the ENV-ERROR line
			stderrHas  string
			stdoutNone string // must not be on stdout
		}{
			{[]string{"--bogus"}, "flag provided but not defined: -bogus", "--help lists the flags", "NAME:"},
			{[]string{"--start-timeout", "soon"}, `invalid value "soon" for flag -start-timeout`, "parse error", "USAGE:"},
			{[]string{"stray"}, `unexpected arguments ["stray"]`, "unexpected arguments", "stray\n"},
			{[]string{"--config", "/nonexistent/ptcombiner.conf"}, "no such file or directory", "no such file", "NAME:"},
			{[]string{"--help"}, "--help or --version (printed on stderr)", "USAGE:", "USAGE:"},
			{[]string{"--version"}, "--help or --version (printed on stderr)", prog + " version", prog + " version"},
		} {
			t.Run(prog+" "+strings.Join(tc.args, " "), func(t *testing.T) {
				stdout, stderr := runManagedFailure(t, prog, tc.args)
				lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
				for _, l := range lines {
					if !ptLine.MatchString(l) {
						t.Errorf("stdout line tor cannot parse: %q", l)
					}
				}
				if len(lines) != 1 || !strings.HasPrefix(lines[0], "ENV-ERROR ") || !strings.Contains(lines[0], tc.reason) {
					t.Errorf("stdout = %q, want one ENV-ERROR line with %q", stdout, tc.reason)
				}
				if strings.Contains(stdout, tc.stdoutNone) {
					t.Errorf("stdout holds %q: %q", tc.stdoutNone, stdout)
				}
				if !strings.Contains(stderr, tc.stderrHas) {
					t.Errorf("stderr lacks %q:\n%s", tc.stderrHas, stderr)
				}
			})
		}
	}
}

// runManagedFailure runs prog as tor would, with args, reads its first
// stdout line, checks that it is still running (the wait after a fatal
// error), closes its stdin and returns all it wrote.
func runManagedFailure(t *testing.T, prog string, args []string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(bin(prog), args...)
	cmd.Env = append(cmd.Environ(),
		"TOR_PT_MANAGED_TRANSPORT_VER=1",
		"TOR_PT_STATE_LOCATION="+t.TempDir(),
		"TOR_PT_EXIT_ON_STDIN_CLOSE=1",
		"TOR_PT_CLIENT_TRANSPORTS=a", // read by the client only
		"TOR_PT_SERVER_TRANSPORTS=a", // read by the server only
		"TOR_PT_SERVER_BINDADDR=a-127.0.0.1:0",
		"TOR_PT_ORPORT=127.0.0.1:1",
	)
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	first, _ := r.ReadString('\n')
	var tail string
	var waitErr error
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		b, _ := io.ReadAll(r)
		tail = string(b)
		waitErr = cmd.Wait() // after stdout's EOF, as exec.Cmd asks
	}()
	// Without the wait the program would be gone at once; 300 ms is not a
	// bound on anything, only a chance for an early exit to show.
	select {
	case <-exited:
		t.Errorf("%s exited right after its error line (%v); it must wait for tor (PROTOCOLS.md A25)", prog, waitErr)
	case <-time.After(300 * time.Millisecond):
	}
	stdin.Close()
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("%s still runs 30 s after its stdin closed", prog)
	}
	err = waitErr
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("exit: %v, want status 1", err)
	}
	return first + tail, errBuf.String()
}

// Without tor, --help is for a person and goes to stdout; a bad flag is one
// line on stderr, and nothing on stdout.
func TestStandaloneHelpAndFlagErrors(t *testing.T) {
	for _, prog := range []string{"ptcombiner-client", "ptcombiner-server"} {
		var out, errOut bytes.Buffer
		cmd := exec.Command(bin(prog), "--help")
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "USAGE:") || errOut.Len() != 0 {
			t.Errorf("%s --help: %v; stdout %d bytes, stderr %q", prog, err, out.Len(), errOut.String())
		}
		out.Reset()
		errOut.Reset()
		cmd = exec.Command(bin(prog), "--bogus")
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		if err == nil || out.Len() != 0 || strings.Count(errOut.String(), "\n") != 1 || !strings.Contains(errOut.String(), "-bogus") {
			t.Errorf("%s --bogus: %v; stdout %q, stderr %q", prog, err, out.String(), errOut.String())
		}
	}
}
