package main

import (
	"github.com/ptcombiner/ptcombiner/ptproc"

	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/ptcombiner/ptcombiner/shim"
)

// A phaseError says at which step of a setup through a topology a
// connection failed: a count of failures says nothing until it says why.
type phaseError struct {
	phase string // "connect", "SOCKS handshake", "first byte out", "first byte back"
	err   error
}

func (e *phaseError) Error() string { return e.phase + ": " + e.err.Error() }
func (e *phaseError) Unwrap() error { return e.err }

// failureKind names what went wrong in a few words that are the same for
// every connection that failed the same way: the phase, and the errno, the
// SOCKS reply or the kind of ending, without addresses or ports.
func failureKind(err error) string {
	phase := "setup"
	var pe *phaseError
	if errors.As(err, &pe) {
		phase = pe.phase
	}
	var re *shim.ReplyError
	var errno syscall.Errno
	cause := ""
	switch {
	case errors.As(err, &re):
		cause = "SOCKS reply " + re.Error()
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		cause = "timed out"
	case errors.As(err, &errno):
		cause = errno.Error()
	case errors.Is(err, io.ErrUnexpectedEOF):
		cause = "closed mid-message"
	case errors.Is(err, io.EOF):
		cause = "closed"
	default:
		cause = innermost(err).Error()
	}
	return phase + ": " + cause
}

// innermost is the error at the bottom of err's chain (the first, when
// errors were joined).
func innermost(err error) error {
	for {
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next := u.Unwrap()
			if next == nil {
				return err
			}
			err = next
		case interface{ Unwrap() []error }:
			if errs := u.Unwrap(); len(errs) > 0 {
				err = errs[0]
				continue
			}
			return err
		default:
			return err
		}
	}
}

// failures counts failed connections by kind, keeping one full error of
// each kind as an example. Safe for concurrent use.
type failures struct {
	mu      sync.Mutex
	counts  map[string]int
	example map[string]string
	total   int
}

// init makes the maps; the caller holds f.mu.
func (f *failures) init() {
	if f.counts == nil {
		f.counts, f.example = map[string]int{}, map[string]string{}
	}
}

func (f *failures) add(err error) {
	k := failureKind(err)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	f.counts[k]++
	f.total++
	if _, ok := f.example[k]; !ok {
		f.example[k] = err.Error()
	}
}

// addUntried counts connections that were never tried because too many
// failed before them.
func (f *failures) addUntried(n int) {
	if n <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	f.counts[untried] += n
	f.total += n
}

const untried = "not tried: too many failed before"

func (f *failures) merge(g *failures) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.init()
	for k, n := range g.counts {
		f.counts[k] += n
		if _, ok := f.example[k]; !ok && g.example[k] != "" {
			f.example[k] = g.example[k]
		}
	}
	f.total += g.total
}

func (f *failures) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total
}

// String lists the kinds, most frequent first, each with its example:
// "" when nothing failed.
func (f *failures) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	kinds := make([]string, 0, len(f.counts))
	for k := range f.counts {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, b string) int {
		if f.counts[a] != f.counts[b] {
			return f.counts[b] - f.counts[a]
		}
		return strings.Compare(a, b)
	})
	var b strings.Builder
	for _, k := range kinds {
		fmt.Fprintf(&b, "    %6d  %s", f.counts[k], k)
		if ex := f.example[k]; ex != "" {
			fmt.Fprintf(&b, "\n            e.g. %s", ex)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// tcpCounters are the kernel's TCP counters that count a connection lost
// or delayed on its way in: a full accept queue (ListenOverflows,
// ListenDrops), a full SYN queue (TCPReqQFullDrop, SyncookiesSent), a
// retransmitted SYN (TCPSynRetrans), a connect that failed (AttemptFails) or
// a reset (EstabResets, TCPAbortOnData). They count for the whole machine.
var tcpCounters = []string{
	"TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPReqQFullDrop", "TcpExt.SyncookiesSent",
	"TcpExt.TCPSynRetrans", "TcpExt.TCPTimeouts", "TcpExt.TCPAbortOnData", "TcpExt.TCPAbortOnTimeout",
	"Tcp.AttemptFails", "Tcp.EstabResets",
}

// readTCPCounters reads tcpCounters from /proc/net/netstat and
// /proc/net/snmp, whose lines come in pairs: names, then values.
func readTCPCounters() map[string]int64 {
	out := map[string]int64{}
	for _, file := range []string{"/proc/net/netstat", "/proc/net/snmp"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) != len(values) || len(names) == 0 || names[0] != values[0] {
				continue
			}
			prefix := strings.TrimSuffix(names[0], ":")
			for j := 1; j < len(names); j++ {
				var v int64
				fmt.Sscan(values[j], &v)
				out[prefix+"."+names[j]] = v
			}
		}
	}
	return out
}

// tcpCounterGrowth names the counters of tcpCounters that grew from before
// to after, or says that none did.
func tcpCounterGrowth(before, after map[string]int64) string {
	var grew []string
	for _, k := range tcpCounters {
		if d := after[k] - before[k]; d != 0 {
			grew = append(grew, fmt.Sprintf("%s +%d", k, d))
		}
	}
	if len(grew) == 0 {
		return "none grew"
	}
	return strings.Join(grew, ", ")
}

// childLogs counts what the combiners and their PTs said while
// connections were being opened, by message (digits, which differ between
// two lines of one cause, replaced by N): the combiners' LOG lines towards
// tor (warnings and errors), and their stderr, run at --log-level debug so
// that it carries their own info lines and their PTs' stderr, where a
// goptlib PT says why it gave up on a connection.
type childLogs struct {
	mu     sync.Mutex
	counts map[string]int
}

// digits are what differs between two log lines of one cause: addresses,
// ports, pids, durations.
var digits = regexp.MustCompile(`[0-9]+`)

// routine are the stderr lines of a healthy run.
var routine = regexp.MustCompile(`msg="?(connection ended|PT program started|PT program exited|exiting|draining)`)

func (l *childLogs) add(key string) {
	key = digits.ReplaceAllString(key, "N")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.counts == nil {
		l.counts = map[string]int{}
	}
	l.counts[key]++
}

// onLog is a combiner's ptproc.Spec.OnLog.
func (l *childLogs) onLog(program string) func(severity ptproc.Severity, message string) {
	return func(severity ptproc.Severity, message string) {
		if severity == ptproc.SeverityWarning || severity == ptproc.SeverityError {
			l.add(program + " LOG " + string(severity) + ": " + message)
		}
	}
}

// handler is a combiner's ptproc.Spec.Logger handler: it counts the
// combiner's stderr lines but the routine ones, and passes every record on
// to next.
func (l *childLogs) handler(program string, next slog.Handler) slog.Handler {
	return stderrHandler{l, program, next}
}

type stderrHandler struct {
	logs    *childLogs
	program string
	next    slog.Handler
}

func (h stderrHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h stderrHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "stderr" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "line" {
				line := a.Value.String()
				if !routine.MatchString(line) {
					// time=... first: not part of the cause.
					if _, rest, ok := strings.Cut(line, " "); ok && strings.HasPrefix(line, "time=") {
						line = rest
					}
					h.logs.add(h.program + " stderr: " + line)
				}
				return false
			}
			return true
		})
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h stderrHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return stderrHandler{h.logs, h.program, h.next.WithAttrs(as)}
}

func (h stderrHandler) WithGroup(name string) slog.Handler {
	return stderrHandler{h.logs, h.program, h.next.WithGroup(name)}
}

func (l *childLogs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.counts) == 0 {
		return "    none\n"
	}
	keys := make([]string, 0, len(l.counts))
	for k := range l.counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "    %6d  %s\n", l.counts[k], k)
	}
	return b.String()
}
