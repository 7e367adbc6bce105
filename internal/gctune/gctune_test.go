package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, 800},        // goal: the minimum, 32 MiB
		{1 << 10, 800},  // likewise
		{1 << 20, 825},  // 33 MiB, by the minimum
		{4 << 20, 800},  // 36 MiB
		{16 << 20, 200}, // 48 MiB
		{Headroom, 100},
		{1 << 30, 100},
	} {
		if got := Percent(c.live); got != c.want {
			t.Errorf("Percent(%d) = %d, want %d", c.live, got, c.want)
		}
	}
}

// gcPercent reads the GC percent in force.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// waitPercent collects until the tuner has set a GC percent that ok
// accepts, or fails after a generous ceiling.
func waitPercent(t *testing.T, what string, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok(gcPercent()) {
		if time.Now().After(deadline) {
			t.Fatalf("the GC percent stayed %d: want %s", gcPercent(), what)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the cleanup runs after the cycle
	}
}

// TestTunerFollowsTheLiveHeap: a small heap gets the headroom, a live heap
// larger than the headroom gets Go's default back, cycle after cycle.
func TestTunerFollowsTheLiveHeap(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: the tuner stays off")
	}
	defer debug.SetGCPercent(gcPercent())
	Start()
	waitPercent(t, "above 100 for a small heap", func(p int) bool { return p > 400 && p <= 900 })
	big := make([][]byte, 0, 96)
	for range 96 {
		big = append(big, make([]byte, 1<<20))
	}
	waitPercent(t, "100 for a live heap of 96 MiB", func(p int) bool { return p == minPercent })
	runtime.KeepAlive(big)
	big = nil
	waitPercent(t, "above 100 once the heap is small again", func(p int) bool { return p > 400 && p <= 900 })
}
