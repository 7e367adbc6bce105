package test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Ceilings for waits on events. They bound how long a test waits for
// something that should happen, so that a broken product fails the test
// instead of hanging it; they are not timing requirements, and a loaded
// machine (two cores shared by several test runs) must never reach them.
const (
	// eventCeiling bounds a wait for a process, a log line, a restart or a
	// socket to come or go.
	eventCeiling = 60 * time.Second
	// pollInterval is how often a wait looks again.
	pollInterval = 20 * time.Millisecond
)

// waitFor polls cond until it holds and returns how long that took; when
// ceiling passes first it fails the test, saying what it waited for.
func waitFor(t testing.TB, what string, ceiling time.Duration, cond func() bool) time.Duration {
	t.Helper()
	took, ok := poll(ceiling, cond)
	if !ok {
		t.Fatalf("waited %v for %s; it did not happen", ceiling, what)
	}
	return took
}

// poll is waitFor without the test: it reports whether cond came to hold
// within ceiling, and after how long.
func poll(ceiling time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	for {
		if cond() {
			return time.Since(start), true
		}
		if time.Since(start) > ceiling {
			return time.Since(start), false
		}
		time.Sleep(pollInterval)
	}
}

// retryBudget lets the cases of a test retry a failure that is known and
// not the product's (PROTOCOLS.md: obfs4proxy's client stalls on a few
// percent of obfs3-inside-obfs4 setups). It prints every retry, and when
// the test ends it fails the test if the retries passed the stated rate:
// a retry loop must not hide a failure that became common.
type retryBudget struct {
	t       testing.TB
	why     string  // the known failure retries are for
	perCase float64 // the most retries tolerated per case run

	mu      sync.Mutex
	cases   int
	retries int
}

// newRetryBudget returns a budget of perCase retries per case for the known
// failure why, checked when t ends.
func newRetryBudget(t testing.TB, why string, perCase float64) *retryBudget {
	b := &retryBudget{t: t, why: why, perCase: perCase}
	t.Cleanup(b.check)
	return b
}

// run runs one case, f, up to attempts times, and logs each retry on the
// case's own t.
func (b *retryBudget) run(t testing.TB, attempts int, f func() error) error {
	t.Helper()
	b.mu.Lock()
	b.cases++
	b.mu.Unlock()
	var err error
	for i := 1; i <= attempts; i++ {
		if err = f(); err == nil || i == attempts {
			return err
		}
		b.mu.Lock()
		b.retries++
		retries, cases := b.retries, b.cases
		b.mu.Unlock()
		t.Logf("RETRY %d of this case (for %s; %d retries in %d cases so far), after: %v", i, b.why, retries, cases, err)
	}
	return err
}

// allowed is the number of retries the budget tolerates for the cases run.
func (b *retryBudget) allowed() int { return int(b.perCase * float64(b.cases)) }

func (b *retryBudget) check() {
	b.t.Helper()
	if err := b.exceeded(); err != nil {
		b.t.Error(err)
	}
}

// exceeded logs the budget's count and says whether the retries passed it.
func (b *retryBudget) exceeded() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.t.Logf("%d retries in %d cases (for %s); at most %d tolerated (%.2f per case)", b.retries, b.cases, b.why, b.allowed(), b.perCase)
	if b.retries > b.allowed() {
		return fmt.Errorf("%d retries in %d cases, more than the %.2f per case tolerated for %s: the failure is no longer rare",
			b.retries, b.cases, b.perCase, b.why)
	}
	return nil
}

// A retry budget counts every retry and is exceeded above its rate.
func TestRetryBudget(t *testing.T) {
	failing := func(n int) func() error { // fails n times, then succeeds
		return func() error {
			if n--; n >= 0 {
				return fmt.Errorf("failure %d", n)
			}
			return nil
		}
	}
	b := &retryBudget{t: t, why: "a test", perCase: 0.25}
	for _, fails := range []int{0, 0, 1, 0} {
		if err := b.run(t, 3, failing(fails)); err != nil {
			t.Fatal(err)
		}
	}
	if b.retries != 1 || b.exceeded() != nil {
		t.Errorf("1 retry in 4 cases at 0.25 per case: %d retries counted, exceeded: %v", b.retries, b.exceeded())
	}
	if err := b.run(t, 3, failing(3)); err == nil {
		t.Error("a case that failed every attempt passed")
	}
	if b.retries != 3 || b.exceeded() == nil {
		t.Errorf("3 retries in 5 cases at 0.25 per case: %d retries counted, and the budget was not exceeded", b.retries)
	}
}

// syncBuffer is a bytes.Buffer that a child's output can be written to
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
