package chain

import (
	"testing"
	"time"
)

// eventCeiling bounds a test's wait for something that should happen (a
// restart, a log line, a goroutine reaching a point), so that a broken
// product fails the test instead of hanging it. It is not a timing
// requirement: a loaded machine must never reach it.
const eventCeiling = 60 * time.Second

// waitFor polls cond until it holds; when ceiling passes first it fails
// the test, saying what it waited for.
func waitFor(t testing.TB, what string, ceiling time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ceiling)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; it did not happen", ceiling, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
