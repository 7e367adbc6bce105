package shim

import (
	"context"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// openPipes counts this process's pipe descriptors.
func openPipes(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, e := range entries {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, "pipe:") {
			n++
		}
	}
	return n
}

// TestIdlePipesHoldNoKernelPipe: io.Copy's splice would hold a pipe (two
// descriptors) per direction for the life of each connection; Pipe holds
// one only while bytes are in flight.
func TestIdlePipesHoldNoKernelPipe(t *testing.T) {
	const conns = 50
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var rigs []*pipeRig
	for i := 0; i < conns; i++ {
		r := startPipe(t, ctx)
		rigs = append(rigs, r)
		// Bytes both ways, so both directions have spliced at least once.
		msg := []byte("cell")
		r.left.Write(msg)
		if _, err := io.ReadFull(r.right, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
		r.right.Write(msg)
		if _, err := io.ReadFull(r.left, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
	}
	// Pipes the pool dropped (the race detector makes it drop some at
	// random) are closed by their cleanup after a collection.
	for i := 0; i < 3; i++ {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	// The pool may keep a few empty pipes; a pipe per direction would be
	// 4 descriptors per connection.
	if n := openPipes(t); n > 16 {
		t.Errorf("%d idle piped connections hold %d pipe descriptors; want the pool's few", conns, n)
	}
	for _, r := range rigs {
		r.left.Close()
		r.right.Close()
		<-r.done
	}
}

// TestPipeCopyLoopAllocatesNothing: once a pipe runs, moving a chunk each
// way allocates nothing, in Pipe's goroutines or here.
func TestPipeCopyLoopAllocatesNothing(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("counts allocations; the race detector makes sync.Pool drop pipes at random")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := startPipe(t, ctx)
	chunk := make([]byte, 16<<10)
	back := make([]byte, len(chunk))
	roundTrip := func() {
		r.left.Write(chunk)
		io.ReadFull(r.right, back)
		r.right.Write(chunk)
		io.ReadFull(r.left, back)
	}
	for i := 0; i < 10; i++ { // the pool's first pipes, the goroutines' stacks
		roundTrip()
	}
	if n := testing.AllocsPerRun(200, roundTrip); n > 0.5 {
		t.Errorf("%.2f allocations per chunk each way, want none", n)
	}
	r.left.Close()
	r.right.Close()
	<-r.done
}
