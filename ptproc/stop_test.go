package ptproc

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// ceiling bounds waits that end promptly when the code is right; it is far
// below the timeouts and graces that would otherwise end them.
const ceiling = 30 * time.Second

// orderOf returns the EOF and SIGTERM reports among a helper's STATUS lines,
// in order, and the time the SIGTERM report carries.
func orderOf(t *testing.T, status []string) (order []string, termAt time.Time) {
	t.Helper()
	for _, st := range status {
		switch {
		case st == "EOF":
			order = append(order, "EOF")
		case strings.HasPrefix(st, "SIGTERM "):
			ns, err := strconv.ParseInt(strings.TrimPrefix(st, "SIGTERM "), 10, 64)
			if err != nil {
				t.Fatalf("STATUS %q: %v", st, err)
			}
			order, termAt = append(order, "SIGTERM"), time.Unix(0, ns)
		}
	}
	return order, termAt
}

// closeWithin runs p.Close and fails the test if it does not return within
// the ceiling.
func closeWithin(t *testing.T, p *Process) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(ceiling):
		t.Fatalf("Close did not return within %v", ceiling)
		return nil
	}
}

// A22: a child that ignores stdin EOF sees the EOF first, and SIGTERM only
// once the grace after it has passed.
func TestCloseStdinThenGraceThenSIGTERM(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, rec := fakeSpec(t, "order-stay", Client, "a")
	s.StopGrace = 300 * time.Millisecond
	p := startOK(t, s)
	closing := time.Now()
	if err := closeWithin(t, p); err != nil {
		t.Errorf("Close = %v (the child exits 0 on SIGTERM)", err)
	}
	_, status := rec.snapshot()
	order, termAt := orderOf(t, status)
	if !slices.Equal(order, []string{"EOF", "SIGTERM"}) {
		t.Fatalf("the child saw %q, want stdin EOF, then SIGTERM", order)
	}
	// A lower bound: the grace cannot have passed before it began.
	if d := termAt.Sub(closing); d < s.StopGrace {
		t.Errorf("SIGTERM came %v after Close began, before the grace of %v", d, s.StopGrace)
	}
	assertGone(t, p.Pid())
}

// A child that exits on stdin EOF is never signalled: with a grace of ten
// minutes, Close returns as soon as it has exited.
func TestCloseNoSignalForAnObedientChild(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, rec := fakeSpec(t, "order-exit", Client, "a")
	s.StopGrace = 10 * time.Minute
	p := startOK(t, s)
	if err := closeWithin(t, p); err != nil {
		t.Errorf("Close = %v", err)
	}
	_, status := rec.snapshot()
	if order, _ := orderOf(t, status); !slices.Equal(order, []string{"EOF"}) {
		t.Errorf("the child saw %q, want stdin EOF only", order)
	}
	if err := p.ExitErr(); err != nil {
		t.Errorf("ExitErr = %v, want exit status 0", err)
	}
}

// A start cancelled while the child hangs before CMETHODS DONE returns at
// once, not after StartTimeout, and ends the child in A22's order: stdin
// EOF, with no SIGTERM for a child that honours it.
func TestStartCancelledWhileHanging(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, rec := fakeSpec(t, "order-hang", Client, "a")
	s.StartTimeout, s.StopGrace = 10*time.Minute, 10*time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.OnStatus = func(args string) {
		rec.onStatus(args)
		if args == "HANG" {
			cancel()
		}
	}
	type result struct {
		p   *Process
		err error
	}
	done := make(chan result, 1)
	go func() {
		p, err := Start(ctx, s)
		done <- result{p, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(ceiling):
		t.Fatalf("Start did not return within %v of its cancellation", ceiling)
	}
	if r.err == nil {
		r.p.Close()
		t.Fatal("Start succeeded")
	}
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("Start = %v, want context.Canceled", r.err)
	}
	var se *StartError
	if !errors.As(r.err, &se) {
		t.Fatalf("Start = %v, not a *StartError", r.err)
	}
	assertGone(t, se.Pid)
	_, status := rec.snapshot()
	if order, _ := orderOf(t, status); !slices.Equal(order, []string{"EOF"}) {
		t.Errorf("the child saw %q, want stdin EOF only", order)
	}
}

// A Go panic's cause is quoted even when its stack is longer than the
// stderr tail kept.
func TestLastWordsQuotesAPanic(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, _ := fakeSpec(t, "panic", Client, "a")
	p := startOK(t, s)
	defer p.Close()
	<-p.Done()
	words := p.LastWords()
	if len(words) == 0 || words[0] != "panic: BUG: Write(), iat length was 0" {
		t.Fatalf("LastWords = %q, want the panic line first", words)
	}
	if len(words) > quoteLines || !slices.Contains(words, "goroutine 42 [running]:") {
		t.Errorf("LastWords = %q, want the panic and the start of its stack, at most %d lines", words, quoteLines)
	}
	if slices.Contains(p.StderrTail(), words[0]) {
		t.Errorf("the stack was meant to push the panic out of the tail: %q", p.StderrTail())
	}
	if err := p.ExitErr(); err == nil || !strings.Contains(err.Error(), "exit status 2") {
		t.Errorf("ExitErr = %v, want exit status 2", err)
	}
}

func TestLastWordsWithoutAPanic(t *testing.T) {
	for _, tt := range []struct{ tail, want []string }{
		{nil, nil},
		{[]string{"a", "", "b", "  "}, []string{"a", "b"}},
		{[]string{"1", "2", "3", "4", "5", "6", ""}, []string{"2", "3", "4", "5", "6"}},
	} {
		if got := lastWords(tt.tail); !slices.Equal(got, tt.want) {
			t.Errorf("lastWords(%q) = %q, want %q", tt.tail, got, tt.want)
		}
	}
}

// A start whose ctx has ended launches nothing.
func TestStartCancelledBeforeLaunch(t *testing.T) {
	s, _, _ := fakeSpec(t, "client", Client, "a")
	s.Path = filepath.Join(t.TempDir(), "never-run") // launching it would fail otherwise
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Start(ctx, s)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Start = %v, want context.Canceled", err)
	}
}
