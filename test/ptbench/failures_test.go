package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/ptcombiner/ptcombiner/shim"
)

// TestFailureKind: connections that failed the same way count together,
// whatever their addresses, and the kind says the phase and the cause.
func TestFailureKind(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&phaseError{"connect", fmt.Errorf("dial tcp 127.0.0.1:4711: %w", os.NewSyscallError("connect", syscall.ECONNREFUSED))}, "connect: connection refused"},
		{&phaseError{"SOCKS handshake", fmt.Errorf("socks5: handshake with 127.0.0.1:9: %w", &shim.ReplyError{Code: 1})}, "SOCKS handshake: SOCKS reply general SOCKS server failure (0x01)"},
		{&phaseError{"first byte back", fmt.Errorf("read: %w", os.ErrDeadlineExceeded)}, "first byte back: timed out"},
		{&phaseError{"first byte back", io.EOF}, "first byte back: closed"},
		{&phaseError{"first byte back", io.ErrUnexpectedEOF}, "first byte back: closed mid-message"},
		{&phaseError{"connect", fmt.Errorf("bind: %w", syscall.EADDRNOTAVAIL)}, "connect: cannot assign requested address"},
		{fmt.Errorf("odd: %w", fmt.Errorf("deep cause")), "setup: deep cause"},
	} {
		if got := failureKind(tc.err); got != tc.want {
			t.Errorf("failureKind(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	var f failures
	f.add(&phaseError{"connect", fmt.Errorf("dial tcp 127.0.0.1:1: %w", syscall.ECONNREFUSED)})
	f.add(&phaseError{"connect", fmt.Errorf("dial tcp 127.0.0.1:2: %w", syscall.ECONNREFUSED)})
	f.addUntried(3)
	if f.count() != 5 || !strings.Contains(f.String(), "     2  connect: connection refused") || !strings.Contains(f.String(), "     3  "+untried) {
		t.Errorf("tally of 5:\n%s", &f)
	}
}

// TestChildLogs: a combiner's stderr lines and LOG warnings are counted by
// message, digits aside; routine lines and LOG notices are not.
func TestChildLogs(t *testing.T) {
	var l childLogs
	log := slog.New(l.handler("ptcombiner-server", slog.NewTextHandler(io.Discard, nil)))
	log.Debug("stderr", "line", `time=2026-12-02T04:00:00Z level=DEBUG msg=stderr child=testpt pid=123 line="testpt: ORPort: read tcp 127.0.0.1:40000->127.0.0.1:41000: i/o timeout"`)
	log.Debug("stderr", "line", `time=2026-12-02T04:00:01Z level=DEBUG msg=stderr child=testpt pid=123 line="testpt: ORPort: read tcp 127.0.0.1:40002->127.0.0.1:41000: i/o timeout"`)
	log.Debug("stderr", "line", `time=2026-12-02T04:00:01Z level=INFO msg="PT program started" program=/bin/testpt pid=9`)
	log.Info("not stderr")
	on := l.onLog("ptcombiner-client")
	on("warning", "chained connection failed err=x socks_reply=1")
	on("notice", "something routine")
	got := l.String()
	want := "     2  ptcombiner-server stderr: level=DEBUG msg=stderr child=testpt pid=N line=\"testpt: ORPort: read tcp N.N.N.N:N->N.N.N.N:N: i/o timeout\"\n" +
		"     1  ptcombiner-client LOG warning: chained connection failed err=x socks_reply=N\n"
	if !strings.Contains(got, want[strings.Index(want, "\n")+1:]) || !strings.Contains(got, want[:strings.Index(want, "\n")+1]) || strings.Count(got, "\n") != 2 {
		t.Errorf("childLogs:\n%s\nwant:\n%s", got, want)
	}
}
