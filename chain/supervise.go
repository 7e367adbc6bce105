package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
)

// Restart policy for crashed children: the first restart comes after
// minBackoff, each further crash in a row doubles the wait up to maxBackoff;
// a child that ran for stableAfter is forgiven its past crashes. So a child
// that crashes in a loop is restarted at a bounded rate, and its chains
// report why they fail meanwhile.
const (
	minBackoff  = 100 * time.Millisecond
	maxBackoff  = 30 * time.Second
	stableAfter = time.Minute
)

// EventKind says what happened to a supervised child.
type EventKind string

// The kinds of [Event], spelt as in STATUS lines' EVENT=.
const (
	EventExited        EventKind = "exited"         // it exited; a restart follows
	EventRestarted     EventKind = "restarted"      // a new child runs
	EventRestartFailed EventKind = "restart-failed" // a restart failed; another follows
)

// Event is what a supervisor reports about its child, for LOG and STATUS
// lines towards tor.
type Event struct {
	Program string
	Pid     int
	Kind    EventKind
	Err     error
	// Stderr holds, for EventExited, the child's last stderr lines that say
	// why it ended (ptproc's LastWords: a Go panic's cause first), sanitised.
	Stderr  []string
	Crashes int           // crashes in a row
	Next    time.Duration // wait before the next restart
}

// errSupervisorClosed is Start's error once Close was called.
var errSupervisorClosed = errors.New("the program is being stopped")

// supervisor keeps one child running: it starts it, and when it exits
// restarts it with backoff until life ends or Close is called. life is its
// owner's lifetime: its end also aborts a start in progress and ends the
// child.
type supervisor struct {
	name    string
	life    context.Context
	start   func(context.Context) (*ptproc.Process, error)
	log     *slog.Logger
	onEvent func(Event)
	observe func(EventKind) // nil: not observed (Observer)

	startMu  sync.Mutex
	mu       sync.Mutex
	proc     *ptproc.Process
	err      error // why no child runs, when none does
	crashes  int
	started  time.Time
	failedAt time.Time
	running  bool // the watch loop runs
	closed   bool // Close was called: no child may start any more
}

// Start starts the child once, now. ctx bounds this start only (as does
// life); when it succeeds, the supervisor keeps the child running until
// life ends or Close; wg counts the watch goroutine.
func (s *supervisor) Start(ctx context.Context, wg *sync.WaitGroup) (*ptproc.Process, error) {
	s.startMu.Lock() // one start at a time: never two children for one slot
	defer s.startMu.Unlock()
	s.mu.Lock()
	running, closed := s.running, s.closed
	s.mu.Unlock()
	if closed {
		return nil, errSupervisorClosed
	}
	if running {
		return s.Current()
	}
	s.mu.Lock()
	if s.err != nil && time.Since(s.failedAt) < time.Second { // do not relaunch a failing program per connection
		err := s.err
		s.mu.Unlock()
		return nil, err
	}
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.life, cancel)
	p, err := s.start(ctx)
	stop()
	cancel()
	if err != nil {
		s.mu.Lock()
		s.err = err
		if ctx.Err() == nil { // the program's fault, not a caller that gave up
			s.failedAt = time.Now()
		}
		s.mu.Unlock()
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		p.Close()
		return nil, errSupervisorClosed
	}
	s.proc, s.err, s.started, s.running = p, nil, time.Now(), true
	wg.Add(1) // under mu, so before Close, which comes before the owner's wg.Wait
	s.mu.Unlock()
	s.observed(EventStarted)
	go func() {
		defer wg.Done()
		s.watch()
	}()
	return p, nil
}

// adopt makes p the current child, unless Close was called (the caller then
// closes p).
func (s *supervisor) adopt(p *ptproc.Process) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.proc, s.err, s.started = p, nil, time.Now()
	return true
}

// Current returns the running child, or why there is none.
func (s *supervisor) Current() (*ptproc.Process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		if s.err == nil {
			return nil, errors.New("the program was never started")
		}
		return nil, s.err
	}
	select {
	case <-s.proc.Done():
		if s.err != nil {
			return nil, s.err
		}
		return nil, fmt.Errorf("%s exited (%v) and is being restarted", s.name, s.proc.ExitErr())
	default:
		return s.proc, nil
	}
}

// Pid is the running child's pid, or 0.
func (s *supervisor) Pid() int {
	p, err := s.Current()
	if err != nil {
		return 0
	}
	return p.Pid()
}

// Close ends the current child, in ptproc's order (stdin EOF, grace,
// SIGTERM, grace, SIGKILL), and keeps any other from starting; the watch
// loop ends with life, or at its next restart.
func (s *supervisor) Close() error {
	s.mu.Lock()
	s.closed = true
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Close()
}

func (s *supervisor) event(e Event) {
	e.Program = s.name
	if s.onEvent != nil {
		s.onEvent(e)
	}
	s.observed(e.Kind)
}

func (s *supervisor) observed(k EventKind) {
	if s.observe != nil {
		s.observe(k)
	}
}

// watch restarts the child each time it exits, until life ends (it then
// ends the child) or Close.
func (s *supervisor) watch() {
	for {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		select {
		case <-s.life.Done():
			s.Close()
			return
		case <-p.Done():
		}
		p.Close() // releases its stdin pipe; the process is gone already
		s.mu.Lock()
		if s.closed || s.life.Err() != nil { // the end was asked for, not a crash
			s.mu.Unlock()
			return
		}
		if time.Since(s.started) >= stableAfter {
			s.crashes = 0
		}
		s.crashes++
		wait := backoff(s.crashes)
		crashes := s.crashes
		s.mu.Unlock()
		words := p.LastWords()
		attrs := []any{"program", s.name, "pid", p.Pid(), "err", p.ExitErr(), "crashes_in_a_row", crashes, "restart_in", wait}
		if len(words) > 0 { // last: what tor's 512-byte LOG line cuts first
			attrs = append(attrs, "stderr", strings.Join(words, " | "))
		}
		s.log.Warn("PT program exited; restarting it", attrs...)
		s.event(Event{Pid: p.Pid(), Kind: EventExited, Err: p.ExitErr(), Stderr: words, Crashes: crashes, Next: wait})
		if !s.restart(wait, crashes) {
			return
		}
	}
}

// restart starts a new child after wait, and again with backoff while that
// fails; false when life ended or Close was called first.
func (s *supervisor) restart(wait time.Duration, crashes int) bool {
	for {
		select {
		case <-s.life.Done():
			return false
		case <-time.After(wait):
		}
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return false
		}
		np, err := s.start(s.life)
		if err == nil {
			if !s.adopt(np) {
				np.Close()
				return false
			}
			s.log.Warn("PT program restarted", "program", s.name, "pid", np.Pid())
			s.observed(EventStarted)
			s.event(Event{Pid: np.Pid(), Kind: EventRestarted, Crashes: crashes})
			return true
		}
		s.mu.Lock()
		s.crashes++
		crashes = s.crashes
		wait = backoff(crashes)
		s.err = fmt.Errorf("%s cannot be restarted (%d failures in a row): %w", s.name, crashes, err)
		closed = s.closed
		s.mu.Unlock()
		if closed || s.life.Err() != nil {
			return false
		}
		s.log.Error("PT program cannot be restarted", "program", s.name, "err", err, "restart_in", wait)
		s.event(Event{Kind: EventRestartFailed, Err: err, Crashes: crashes, Next: wait})
	}
}

func backoff(crashes int) time.Duration {
	d := minBackoff
	for i := 1; i < crashes && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}
