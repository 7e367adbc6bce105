// Package gctune owns the garbage collector's pacing in ptcombiner's
// programs: it gives a small live heap a fixed headroom of garbage before
// the next collection, where Go's default (GOGC=100) allows only as much
// garbage as there is live heap, and no less than 4 MiB.
//
// A combiner is a byte pump: it keeps little (a few MiB for a handful of
// connections) and allocates a lot (the obfs4 module allocates per frame
// and per write, about twice the bytes it carries). With the default, such
// a process collects every few MiB, dozens of times a second under bulk
// load, and returns and refaults the same pages; in-process obfs4|obfs4
// then spends about a third of its CPU in the collector and the page
// faults around it (docs/performance.md, "The collector"). A headroom of
// Headroom above the live heap removes that, and costs at most Headroom of
// resident memory; once the live heap is larger than Headroom (a bridge
// with a few hundred connections) the default pacing holds unchanged, so
// the memory per connection does not grow.
//
// The tuner follows each collection (a cleanup re-armed on a sentinel
// object every cycle) and sets the GC percent to
// max(100, Headroom*100/live), bounded so that the
// runtime's minimum heap (which scales with it) stays within live+Headroom. An operator's GOGC, when set, is obeyed and
// the tuner stays off; GOMEMLIMIT bounds the heap as ever.
package gctune

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Headroom is the garbage a small heap may collect before a collection.
const Headroom = 32 << 20

// minPercent is the GC percent the tuner never goes below: Go's default.
const minPercent = 100

// heapMinimum is Go's smallest heap goal at GOGC=100, which it scales
// with the GC percent (runtime's defaultHeapMinimum): at 800 a heap is
// not collected below 32 MiB, whatever it holds live.
const heapMinimum = 4 << 20

var start sync.Once

// Start turns the tuner on for the rest of the process, unless the
// environment sets GOGC. It may be called more than once.
func Start() {
	if os.Getenv("GOGC") != "" {
		return
	}
	start.Do(func() {
		t := &tuner{sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
		t.adjust()
		t.arm()
	})
}

type tuner struct {
	mu     sync.Mutex
	sample []metrics.Sample
}

// sentinel is allocated each cycle so that its cleanup runs after the
// next collection; its size keeps it out of the tiny allocator, whose
// blocks may outlive it.
type sentinel struct{ _ [64]byte }

func (t *tuner) arm() {
	runtime.AddCleanup(&sentinel{}, func(t *tuner) {
		t.adjust()
		t.arm()
	}, t)
}

// adjust sets the GC percent for the live heap the last collection left.
func (t *tuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	debug.SetGCPercent(Percent(t.sample[0].Value.Uint64()))
}

// Percent is the GC percent the tuner sets for a live heap of live bytes:
// the heap goal is then about max(2*live, live+Headroom). The runtime's
// goal is max(live*(1+p/100), heapMinimum*p/100), so p is bounded where
// the minimum alone would pass live+Headroom.
func Percent(live uint64) int {
	byMinimum := (live + Headroom) * 100 / heapMinimum
	p := byMinimum
	if live > 0 {
		p = min(uint64(Headroom)*100/live, byMinimum)
	}
	return int(max(p, minPercent))
}
