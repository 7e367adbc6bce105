package ptproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

// Errors of [Start] and [Process.Close]. Each is wrapped with the child's
// name, its pid, the details and, where useful, its last stderr lines.
var (
	// ErrEnvError: the child printed "ENV-ERROR <msg>" (pt-spec.txt 3.3.1).
	ErrEnvError = errors.New("child reported ENV-ERROR")
	// ErrVersionError: the child printed "VERSION-ERROR" (A9, A11).
	ErrVersionError = errors.New("child reported VERSION-ERROR")
	// ErrBadVersion: "VERSION" with anything but "1" (A10: "VERSION must be
	// exactly 1").
	ErrBadVersion = errors.New("child chose a protocol version other than 1")
	// ErrProxyError: the child printed "PROXY-ERROR <msg>" (A15: fatal).
	ErrProxyError = errors.New("child reported PROXY-ERROR")
	// ErrNoProxyDone: TOR_PT_PROXY was set but no "PROXY DONE" came before
	// CMETHODS DONE (A15: "tor kills the PT").
	ErrNoProxyDone = errors.New("child did not confirm TOR_PT_PROXY with PROXY DONE")
	// ErrProtocol: a line in a place the protocol forbids (A10).
	ErrProtocol = errors.New("PT protocol violation")
	// ErrExited: the child exited before *METHODS DONE.
	ErrExited = errors.New("child exited before it finished configuring")
	// ErrStdoutClosed: the child closed its stdout before *METHODS DONE but
	// did not exit.
	ErrStdoutClosed = errors.New("child closed its stdout before it finished configuring")
	// ErrStartTimeout: no *METHODS DONE within Spec.StartTimeout.
	ErrStartTimeout = errors.New("child did not finish configuring in time")
	// ErrKilled: returned by Close when the child ignored both stdin close
	// and SIGTERM and had to be killed.
	ErrKilled = errors.New("child ignored stdin close and SIGTERM and was killed")
)

const (
	// maxLine bounds one stdout line; a longer line is skipped and logged.
	maxLine = 64 << 10
	// maxStderrChunk bounds one stderr line; a longer one is logged in parts.
	maxStderrChunk = 4 << 10
	// tailLines stderr lines are kept; the last quoteLines go into errors.
	tailLines  = 20
	quoteLines = 5
)

// errStdoutEOF is the stdout reader's verdict when stdout ends before DONE;
// Start turns it into ErrExited or ErrStdoutClosed.
var errStdoutEOF = errors.New("stdout ended")

// Process is one running child PT. It owns the child, its pipes and the
// goroutines that read them; Close ends them all.
type Process struct {
	name  string
	role  Role
	proxy bool // TOR_PT_PROXY was set
	log   *slog.Logger
	grace time.Duration

	onLog    func(severity Severity, message string)
	onStatus func(args string)

	cmd    *exec.Cmd
	pid    int
	stdin  *os.File // our write end; closing it asks the child to exit (A3)
	stdout *os.File // our read ends
	stderr *os.File

	mu         sync.Mutex
	cmethods   map[string]Cmethod
	smethods   map[string]Smethod
	methodErrs map[string]string
	tail       []string
	crash      []string // the Go runtime's crash report, first lines

	started    chan error    // the stdout reader's one verdict on configuration
	stdoutDone chan struct{} // closed when the stdout reader returns
	stderrDone chan struct{} // closed when the stderr reader returns
	exited     chan struct{} // closed after cmd.Wait returned; exitErr set before
	exitErr    error
	done       chan struct{} // closed after exited and both readers returned

	closeOnce sync.Once
	closeErr  error
}

// Start launches the child described by s, as tor would, and waits until it
// has finished configuring (*METHODS DONE) or failed. ctx bounds the start
// only, as net.Dialer.DialContext's does the dial: when it is done before
// *METHODS DONE, Start stops waiting, whatever s.StartTimeout, ends the
// child as Close does and returns ctx's cause; once Start has returned, ctx
// has no effect and the child runs until [Process.Close]. On any error the
// child has been ended and every goroutine has returned before Start returns.
func Start(ctx context.Context, s Spec) (*Process, error) {
	name := s.Name
	if name == "" {
		name = filepath.Base(s.Path)
	}
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("ptproc: %s: %w", name, err)
	}
	if ctx.Err() != nil { // no child to launch only to end it
		return nil, fmt.Errorf("ptproc: %s: start cancelled: %w", name, context.Cause(ctx))
	}
	// A2: the state location "may not exist"; we create it so that each
	// child has its own, private, directory.
	if err := os.MkdirAll(s.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("ptproc: %s: state directory: %w", name, err)
	}
	timeout := s.StartTimeout
	if timeout == 0 {
		timeout = DefaultStartTimeout
	}
	grace := s.StopGrace
	if grace == 0 {
		grace = DefaultStopGrace
	}
	logger := s.Logger
	if logger == nil {
		logger = slog.Default()
	}

	// Our own pipes rather than cmd.StdoutPipe: cmd.Wait would close those
	// while we may still be reading what the child wrote before it exited.
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	stdinR, stdinW, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("ptproc: %s: stdin pipe: %w", name, err)
	}
	stdoutR, stdoutW, err := pipe()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("ptproc: %s: stdout pipe: %w", name, err)
	}
	stderrR, stderrW, err := pipe()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("ptproc: %s: stderr pipe: %w", name, err)
	}

	// Not exec.CommandContext: its Cancel would signal the child at the
	// moment ctx ends, before its stdin is closed; every end goes through
	// stop, in A22's order.
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Env = BuildEnv(os.Environ(), s)
	// A3 and STYLE "Avoid": stdin is a pipe we hold open, never /dev/null.
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, stdoutW, stderrW
	cmd.SysProcAttr = sysProcAttr()
	if err := startLocked(cmd); err != nil {
		closeAll()
		return nil, fmt.Errorf("ptproc: %s: start %s: %w", name, s.Path, err)
	}
	// The child holds its ends now; ours would keep EOF from ever coming.
	stdinR.Close()
	stdoutW.Close()
	stderrW.Close()

	p := &Process{
		name:       name,
		role:       s.Role,
		proxy:      s.ProxyURL != "",
		grace:      grace,
		onLog:      s.OnLog,
		onStatus:   s.OnStatus,
		cmd:        cmd,
		pid:        cmd.Process.Pid,
		stdin:      stdinW,
		stdout:     stdoutR,
		stderr:     stderrR,
		cmethods:   make(map[string]Cmethod),
		smethods:   make(map[string]Smethod),
		methodErrs: make(map[string]string),
		started:    make(chan error, 1),
		stdoutDone: make(chan struct{}),
		stderrDone: make(chan struct{}),
		exited:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	p.log = logger.With("child", name, "pid", p.pid)
	go p.readStdout()
	go p.readStderr()
	go p.wait()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err = <-p.started:
		if errors.Is(err, errStdoutEOF) {
			err = p.whyStdoutEnded()
		}
	case <-timer.C:
		err = fmt.Errorf("%w: no %s DONE within %v", ErrStartTimeout, s.Role.doneKeyword(), timeout)
	case <-ctx.Done():
		err = fmt.Errorf("start cancelled: %w", context.Cause(ctx))
	}
	if err == nil {
		return p, nil
	}
	_ = p.Close() // its ErrKilled says nothing more than err does
	return nil, p.startError(err)
}

// startLocked starts cmd from a goroutine locked to its OS thread, so that
// the thread that forks, to which Pdeathsig is tied, does not change during
// the start (see sysProcAttr and go.dev/issue/27505).
func startLocked(cmd *exec.Cmd) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return cmd.Start()
}

// whyStdoutEnded tells an exit from a closed stdout, waiting up to the
// grace for the child's exit, which usually follows its stdout's EOF.
func (p *Process) whyStdoutEnded() error {
	t := time.NewTimer(p.grace)
	defer t.Stop()
	select {
	case <-p.exited:
		if p.exitErr == nil {
			return fmt.Errorf("%w: exit status 0", ErrExited)
		}
		return fmt.Errorf("%w: %w", ErrExited, p.exitErr)
	case <-t.C:
		return ErrStdoutClosed
	}
}

// StartError is the error of a Start that got as far as launching the child.
// It unwraps to one of the Err* sentinels of this package or to ctx's cause.
type StartError struct {
	Name string
	Pid  int
	// StderrTail holds the child's last stderr lines, sanitised.
	StderrTail []string
	Err        error
}

func (e *StartError) Error() string {
	tail := e.StderrTail
	if len(tail) > quoteLines {
		tail = tail[len(tail)-quoteLines:]
	}
	if len(tail) == 0 {
		return fmt.Sprintf("ptproc: %s (pid %d): %v", e.Name, e.Pid, e.Err)
	}
	return fmt.Sprintf("ptproc: %s (pid %d): %v; last stderr: %q", e.Name, e.Pid, e.Err, tail)
}

func (e *StartError) Unwrap() error { return e.Err }

// startError wraps a start failure with the child's name, pid and stderr.
func (p *Process) startError(err error) error {
	return &StartError{Name: p.name, Pid: p.pid, StderrTail: p.StderrTail(), Err: err}
}

// wait reaps the child, then gives the readers the grace to drain what it
// wrote; a grandchild that inherited the pipes cannot hold them open longer.
func (p *Process) wait() {
	defer close(p.done)
	p.exitErr = p.cmd.Wait()
	close(p.exited)
	p.stdin.Close() // nobody is left to read it
	t := time.NewTimer(p.grace)
	defer t.Stop()
	for _, ch := range []chan struct{}{p.stdoutDone, p.stderrDone} {
		select {
		case <-ch:
		case <-t.C:
			p.stdout.Close() // unblocks a pending Read with os.ErrClosed
			p.stderr.Close()
			<-ch
		}
	}
}

// stdoutState is the stdout reader's position in the protocol (A9).
type stdoutState struct {
	phase     phase
	proxyDone bool
	reported  bool
}

type phase int

const (
	phaseLaunched phase = iota // before VERSION
	phaseVersion               // after VERSION, before DONE
	phaseDone                  // after *METHODS DONE: only LOG and STATUS
	phaseFailed                // after a fatal line: drained, ignored
)

// readStdout reads the child's stdout until EOF, for the child's whole life.
func (p *Process) readStdout() {
	defer close(p.stdoutDone)
	defer p.stdout.Close()
	st := &stdoutState{}
	r := bufio.NewReaderSize(p.stdout, maxLine)
	for {
		raw, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			p.log.Warn("stdout line longer than the limit ignored", "limit", maxLine)
		} else if len(raw) > 0 {
			p.handleLine(strings.TrimSuffix(string(raw), "\n"), st)
		}
		if err != nil {
			break // io.EOF, or os.ErrClosed from wait
		}
	}
	p.report(st, errStdoutEOF)
}

// report delivers the stdout reader's verdict to Start, once.
func (p *Process) report(st *stdoutState, err error) {
	if !st.reported {
		st.reported = true
		p.started <- err
	}
}

// fail ends the configuration phase with err.
func (p *Process) fail(st *stdoutState, err error) {
	st.phase = phaseFailed
	p.report(st, err)
}

// isProtocolKeyword reports the keywords of the configuration phase, which
// A10 forbids after DONE.
func isProtocolKeyword(kw string) bool {
	switch kw {
	case kwVersion, kwVersionError, kwEnvError, kwProxyDone, kwProxyError,
		kwCmethod, kwCmethodError, kwCmethodsDone, kwSmethod, kwSmethodError, kwSmethodsDone:
		return true
	}
	return false
}

// restAfterFirst returns l.Rest without its first token.
func restAfterFirst(l Line) string {
	if len(l.Args) == 0 {
		return ""
	}
	return strings.TrimLeft(strings.TrimPrefix(l.Rest, l.Args[0]), " \t\r\v\f")
}

// handleLine applies one stdout line to the protocol state (A8-A17).
func (p *Process) handleLine(s string, st *stdoutState) {
	l, err := ParseLine(s)
	if err != nil {
		p.log.Warn("malformed stdout line ignored", "line", Sanitize(s), "err", err)
		return
	}
	switch l.Keyword {
	case kwLog: // A16; tor accepts LOG in every phase
		p.handleLog(l)
		return
	case kwStatus: // A17
		args := Sanitize(l.Rest)
		p.log.Debug("STATUS", "args", args)
		if p.onStatus != nil {
			p.onStatus(args)
		}
		return
	}
	if !isProtocolKeyword(l.Keyword) {
		// A8: "unknown keywords ignored".
		p.log.Debug("unknown stdout keyword ignored", "line", Sanitize(s))
		return
	}
	switch st.phase {
	case phaseFailed:
		p.log.Debug("stdout line after a fatal one ignored", "line", Sanitize(s))
		return
	case phaseDone:
		// A10: "any METHOD/PROXY line after DONE makes tor destroy the PT";
		// we keep the child and ignore the line.
		p.log.Warn("protocol violation: line after DONE ignored", "line", Sanitize(s))
		return
	}
	switch l.Keyword {
	case kwEnvError:
		p.fail(st, fmt.Errorf("%w: %s", ErrEnvError, Sanitize(l.Rest)))
		return
	case kwVersionError:
		p.fail(st, fmt.Errorf("%w: %s", ErrVersionError, Sanitize(l.Rest)))
		return
	case kwVersion:
		if st.phase != phaseLaunched {
			p.fail(st, fmt.Errorf("%w: second VERSION line", ErrProtocol))
			return
		}
		// tor's parse_version: strcmp("1", ...) — exactly "1".
		if len(l.Args) != 1 || l.Args[0] != "1" {
			p.fail(st, fmt.Errorf("%w: VERSION %q", ErrBadVersion, Sanitize(l.Rest)))
			return
		}
		st.phase = phaseVersion
		return
	}
	if st.phase == phaseLaunched {
		// tor destroys a PT whose method or proxy line precedes VERSION.
		p.fail(st, fmt.Errorf("%w: %s line before VERSION", ErrProtocol, l.Keyword))
		return
	}
	clientLine := l.Keyword == kwCmethod || l.Keyword == kwCmethodError || l.Keyword == kwCmethodsDone ||
		l.Keyword == kwProxyDone || l.Keyword == kwProxyError
	if clientLine != (p.role == Client) {
		p.log.Warn("line of the other role ignored", "role", p.role, "line", Sanitize(s))
		return
	}
	switch l.Keyword {
	case kwProxyError:
		p.fail(st, fmt.Errorf("%w: %s", ErrProxyError, Sanitize(l.Rest)))
	case kwProxyDone:
		switch {
		case len(l.Args) != 1 || l.Args[0] != "DONE":
			p.log.Warn("malformed PROXY line ignored", "line", Sanitize(s))
		case !p.proxy:
			p.log.Warn("PROXY DONE although no TOR_PT_PROXY was given; ignored")
		default:
			st.proxyDone = true
		}
	case kwCmethod:
		m, err := ParseCmethod(l)
		if err != nil {
			p.malformedMethod(l, err)
			return
		}
		p.mu.Lock()
		_, dup := p.cmethods[m.Name]
		p.cmethods[m.Name] = m
		p.mu.Unlock()
		if dup {
			p.log.Warn("CMETHOD repeated; the last one kept", "method", m.Name)
		}
	case kwSmethod:
		m, err := ParseSmethod(l)
		if err != nil {
			p.malformedMethod(l, err)
			return
		}
		p.mu.Lock()
		_, dup := p.smethods[m.Name]
		p.smethods[m.Name] = m
		p.mu.Unlock()
		if dup {
			p.log.Warn("SMETHOD repeated; the last one kept", "method", m.Name)
		}
	case kwCmethodError, kwSmethodError:
		// A13: "warnings; the PT keeps running".
		if len(l.Args) == 0 {
			p.log.Warn("method error without a method name ignored", "keyword", l.Keyword)
			return
		}
		name, msg := Sanitize(l.Args[0]), Sanitize(restAfterFirst(l))
		p.mu.Lock()
		p.methodErrs[name] = msg
		p.mu.Unlock()
		p.log.Warn("child cannot offer a method", "method", name, "reason", msg)
	case kwCmethodsDone, kwSmethodsDone:
		if len(l.Args) != 1 || l.Args[0] != "DONE" {
			p.log.Warn("malformed DONE line ignored", "line", Sanitize(s))
			return
		}
		if p.proxy && !st.proxyDone {
			// A15: "If tor set TOR_PT_PROXY and no PROXY DONE came
			// before DONE, tor kills the PT".
			p.fail(st, ErrNoProxyDone)
			return
		}
		st.phase = phaseDone
		p.report(st, nil)
	}
}

// malformedMethod records a CMETHOD or SMETHOD line that did not parse,
// under its method name when there is one.
func (p *Process) malformedMethod(l Line, err error) {
	msg := Sanitize(err.Error())
	if len(l.Args) > 0 {
		name := Sanitize(l.Args[0])
		p.mu.Lock()
		p.methodErrs[name] = "malformed " + l.Keyword + " line: " + msg
		p.mu.Unlock()
	}
	p.log.Warn("malformed method line ignored", "keyword", l.Keyword, "err", msg)
}

// handleLog logs a LOG line at its severity and passes it to OnLog.
func (p *Process) handleLog(l Line) {
	sev, msg, err := ParseLog(l)
	if err != nil {
		p.log.Warn("malformed LOG line ignored", "line", Sanitize(l.Rest), "err", err)
		return
	}
	msg = Sanitize(msg)
	p.log.Log(context.Background(), severityLevels[sev], msg, "source", "LOG", "severity", string(sev))
	if p.onLog != nil {
		p.onLog(sev, msg)
	}
}

// readStderr logs the child's stderr line by line until EOF, keeping the
// last lines for errors. A18: stderr is "never parsed".
func (p *Process) readStderr() {
	defer close(p.stderrDone)
	defer p.stderr.Close()
	r := bufio.NewReaderSize(p.stderr, maxStderrChunk)
	for {
		raw, err := r.ReadSlice('\n')
		if len(raw) > 0 {
			line := Sanitize(strings.TrimRight(string(raw), "\r\n"))
			p.log.Debug("stderr", "line", line)
			p.keepStderr(line)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// keepStderr adds line to the tail, and to the crash report when it starts
// one or continues it.
func (p *Process) keepStderr(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.tail) == tailLines {
		copy(p.tail, p.tail[1:])
		p.tail = p.tail[:tailLines-1]
	}
	p.tail = append(p.tail, line)
	switch {
	case isCrashLine(line):
		p.crash = []string{line}
	case len(p.crash) > 0 && len(p.crash) < quoteLines && strings.TrimSpace(line) != "":
		p.crash = append(p.crash, line)
	}
}

// isCrashLine reports the first line of the Go runtime's report of a crash
// ("panic: ...", "fatal error: ..."), which comes before a goroutine's
// stack: the stack alone would push the cause out of the last lines.
func isCrashLine(line string) bool {
	return strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ")
}

// LastWords returns the child's stderr lines that say best why it ended,
// sanitised, at most 5: from the last Go panic or fatal error line on, when
// the child printed one, else its last non-blank lines.
func (p *Process) LastWords() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.crash) > 0 {
		return slices.Clone(p.crash)
	}
	return lastWords(p.tail)
}

// lastWords returns the last quoteLines non-blank lines of tail.
func lastWords(tail []string) []string {
	var out []string
	for i := len(tail) - 1; i >= 0 && len(out) < quoteLines; i-- {
		if strings.TrimSpace(tail[i]) != "" {
			out = append(out, tail[i])
		}
	}
	slices.Reverse(out)
	return out
}

// Methods returns the client methods the child offered (client role).
func (p *Process) Methods() map[string]Cmethod {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Cmethod, len(p.cmethods))
	for k, m := range p.cmethods {
		m.Addr = cloneAddr(m.Addr)
		out[k] = m
	}
	return out
}

// ServerMethods returns the server methods the child offered (server role).
func (p *Process) ServerMethods() map[string]Smethod {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Smethod, len(p.smethods))
	for k, m := range p.smethods {
		m.Addr = cloneAddr(m.Addr)
		args := make(pt.Args, len(m.Args))
		for ak, av := range m.Args {
			args[ak] = slices.Clone(av)
		}
		m.Args = args
		out[k] = m
	}
	return out
}

// MethodErrors returns, by method name, the reasons of CMETHOD-ERROR and
// SMETHOD-ERROR lines and of malformed method lines, sanitised.
func (p *Process) MethodErrors() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.methodErrs)
}

// StderrTail returns the child's last stderr lines (up to 20), sanitised.
func (p *Process) StderrTail() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.tail)
}

func cloneAddr(a *net.TCPAddr) *net.TCPAddr {
	if a == nil {
		return nil
	}
	return &net.TCPAddr{IP: slices.Clone(a.IP), Port: a.Port, Zone: a.Zone}
}

// Name returns the child's label.
func (p *Process) Name() string { return p.name }

// Pid returns the child's process id.
func (p *Process) Pid() int { return p.pid }

// Done is closed when the child has exited and its pipes are drained.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitErr returns the child's wait error once it has exited (nil on exit
// status 0), and nil while it runs.
func (p *Process) ExitErr() error {
	select {
	case <-p.exited:
		return p.exitErr
	default:
		return nil
	}
}

// Signal sends sig to the child, e.g. os.Interrupt for the graceful drain of
// proposal 180 (A24). It fails with os.ErrProcessDone once the child is gone.
func (p *Process) Signal(sig os.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("ptproc: %s (pid %d): signal %v: %w", p.name, p.pid, sig, err)
	}
	return nil
}

// Close ends the child in the spec's order (A22: "parent closes stdin,
// waits, SIGTERM, then SIGKILL"), waiting StopGrace after each of the first
// two steps, and returns once the child is reaped and its pipes drained. It
// is idempotent and safe from any goroutine; every call waits for the end.
// It returns ErrKilled (wrapped) when SIGKILL was needed, else nil; the
// child's exit status is ExitErr's.
func (p *Process) Close() error {
	p.closeOnce.Do(func() { p.closeErr = p.stop() })
	<-p.done
	return p.closeErr
}

// stop is the one way this package ends a child (Close, and a start that
// failed or was cancelled), so that SIGTERM never comes with stdin's EOF.
func (p *Process) stop() error {
	p.stdin.Close() // A3: "stdin EOF = graceful exit"
	if p.waitExited() {
		return nil
	}
	p.log.Debug("child still runs after stdin close and the grace; SIGTERM", "grace", p.grace)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.log.Warn("SIGTERM failed", "err", err)
	}
	if p.waitExited() {
		return nil
	}
	p.log.Debug("child still runs after SIGTERM and the grace; SIGKILL", "grace", p.grace)
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.log.Warn("SIGKILL failed", "err", err)
	}
	<-p.exited
	return fmt.Errorf("ptproc: %s (pid %d): %w", p.name, p.pid, ErrKilled)
}

// waitExited waits up to the grace for the child's exit.
func (p *Process) waitExited() bool {
	t := time.NewTimer(p.grace)
	defer t.Stop()
	select {
	case <-p.exited:
		return true
	case <-t.C:
		return false
	}
}
