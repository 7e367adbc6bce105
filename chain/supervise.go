package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Event is what a supervisor reports about its child, for LOG and STATUS
// lines towards tor.
type Event struct {
	Program string
	Pid     int
	Kind    string // "exited", "restarted", "restart-failed"
	Err     error
	Crashes int           // crashes in a row
	Next    time.Duration // wait before the next restart
}

// supervisor keeps one child running: it starts it, and when it exits
// restarts it with backoff until ctx ends.
type supervisor struct {
	name    string
	start   func(context.Context) (*ptproc.Process, error)
	log     *slog.Logger
	onEvent func(Event)

	startMu  sync.Mutex
	mu       sync.Mutex
	proc     *ptproc.Process
	err      error // why no child runs, when none does
	crashes  int
	started  time.Time
	failedAt time.Time
	running  bool // the watch loop runs
}

// Start starts the child once, now. When it succeeds, the supervisor keeps
// it running until ctx ends; wg counts the watch goroutine.
func (s *supervisor) Start(ctx context.Context, wg *sync.WaitGroup) (*ptproc.Process, error) {
	s.startMu.Lock() // one start at a time: never two children for one slot
	defer s.startMu.Unlock()
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
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
	p, err := s.start(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.err, s.failedAt = err, time.Now()
		return nil, err
	}
	s.proc, s.err, s.started, s.running = p, nil, time.Now(), true
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(ctx)
	}()
	return p, nil
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

// Close ends the current child (the watch loop ends with ctx).
func (s *supervisor) Close() error {
	s.mu.Lock()
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
}

func (s *supervisor) watch(ctx context.Context) {
	for {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-p.Done():
		}
		if ctx.Err() != nil {
			return
		}
		p.Close() // releases its stdin pipe; the process is gone already
		s.mu.Lock()
		if time.Since(s.started) >= stableAfter {
			s.crashes = 0
		}
		s.crashes++
		wait := backoff(s.crashes)
		crashes := s.crashes
		s.mu.Unlock()
		s.log.Warn("PT program exited; restarting it", "program", s.name, "pid", p.Pid(), "err", p.ExitErr(),
			"crashes_in_a_row", crashes, "restart_in", wait)
		s.event(Event{Pid: p.Pid(), Kind: "exited", Err: p.ExitErr(), Crashes: crashes, Next: wait})
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			np, err := s.start(ctx)
			if err == nil {
				s.mu.Lock()
				s.proc, s.err, s.started = np, nil, time.Now()
				s.mu.Unlock()
				s.log.Warn("PT program restarted", "program", s.name, "pid", np.Pid())
				s.event(Event{Pid: np.Pid(), Kind: "restarted", Crashes: crashes})
				break
			}
			s.mu.Lock()
			s.crashes++
			crashes = s.crashes
			wait = backoff(crashes)
			s.err = fmt.Errorf("%s cannot be restarted (%d failures in a row): %w", s.name, crashes, err)
			s.mu.Unlock()
			s.log.Error("PT program cannot be restarted", "program", s.name, "err", err, "restart_in", wait)
			s.event(Event{Kind: "restart-failed", Err: err, Crashes: crashes, Next: wait})
		}
	}
}

func backoff(crashes int) time.Duration {
	d := minBackoff
	for i := 1; i < crashes && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}
