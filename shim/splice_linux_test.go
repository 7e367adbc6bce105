package shim

import (
	"bytes"
	"context"
	"io"
	"os"
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

// freePipeCount is how many empty pipes freePipes holds.
func freePipeCount() int {
	freePipes.Lock()
	defer freePipes.Unlock()
	return len(freePipes.list)
}

// TestIdlePipesHoldNoKernelPipe: io.Copy's splice would hold a pipe (two
// descriptors) per direction for the life of each connection; Pipe holds
// one only while bytes are in flight, so every pipe left open once the
// connections are idle is an empty one in freePipes.
func TestIdlePipesHoldNoKernelPipe(t *testing.T) {
	const conns = 50
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	others := openPipes(t) - 2*freePipeCount()
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
	// A direction gives its pipe back after the splice that finds its source
	// empty, which may come just after the bytes were delivered.
	held := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if held = openPipes(t) - 2*freePipeCount() - others; held == 0 {
			break
		}
	}
	if held != 0 {
		t.Errorf("%d idle piped connections hold %d pipe descriptors besides the %d free pipes", conns, held, freePipeCount())
	}
	for _, r := range rigs {
		r.left.Close()
		r.right.Close()
		<-r.done
	}
}

// TestFreePipesBounded: pipes given back beyond maxFreePipes are closed at
// once, not left for a collection.
func TestFreePipesBounded(t *testing.T) {
	before, free := openPipes(t), freePipeCount()
	var taken []*kernelPipe
	for i := 0; i < maxFreePipes+8; i++ {
		p := getPipe()
		if p == nil {
			t.Fatal("no pipe")
		}
		taken = append(taken, p)
	}
	if got, want := openPipes(t), before+2*(len(taken)-free); got != want {
		t.Errorf("%d pipe descriptors with %d pipes taken, want %d", got, len(taken), want)
	}
	for _, p := range taken {
		putPipe(p)
	}
	if n := freePipeCount(); n != maxFreePipes {
		t.Errorf("%d free pipes, want %d", n, maxFreePipes)
	}
	if got, want := openPipes(t), before+2*(maxFreePipes-free); got != want {
		t.Errorf("%d pipe descriptors after giving all back, want %d", got, want)
	}
}

// TestPipeCopyLoopAllocatesNothing: once a pipe runs, moving a chunk each
// way allocates nothing, in Pipe's goroutines or here.
func TestPipeCopyLoopAllocatesNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := startPipe(t, ctx)
	chunk := make([]byte, 16<<10)
	back := make([]byte, len(chunk))
	// A broken pipe would make the round trips fail fast and allocate
	// nothing, so every round trip must carry its chunk.
	failed := false
	roundTrip := func() {
		if _, err := r.left.Write(chunk); err != nil {
			failed = true
		}
		if _, err := io.ReadFull(r.right, back); err != nil {
			failed = true
		}
		if _, err := r.right.Write(chunk); err != nil {
			failed = true
		}
		if _, err := io.ReadFull(r.left, back); err != nil {
			failed = true
		}
	}
	for i := 0; i < 10; i++ { // the pool's first pipes, the goroutines' stacks
		roundTrip()
	}
	n := testing.AllocsPerRun(200, roundTrip)
	if failed {
		t.Fatal("a round trip through the pipe failed")
	}
	if n > 0.5 {
		t.Errorf("%.2f allocations per chunk each way, want none", n)
	}
	r.left.Close()
	r.right.Close()
	<-r.done
}

// TestPipeFullDestination: when the destination stops reading, the splice
// out meets EAGAIN and the direction waits for the destination to drain;
// every byte arrives, in order, once it reads again.
func TestPipeFullDestination(t *testing.T) {
	r := startPipe(t, context.Background())
	const size = 32 << 20 // far more than the socket buffers hold
	x := randomBytes(t, size)
	sent := sendAll(r.left, x)
	// Let the buffers between the pipe and right fill before reading.
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-sent:
		t.Fatalf("all %d bytes went out with nobody reading (%v): the test proves nothing", size, err)
	default:
	}
	got := readAll(r.right)
	if err := <-sent; err != nil {
		t.Fatalf("send: %v", err)
	}
	res := <-got
	if res.err != nil || !bytes.Equal(res.b, x) {
		t.Fatalf("right got %d bytes (%v), want the %d sent, in order", len(res.b), res.err, size)
	}
	r.right.CloseWrite()
	if p := <-r.done; p.err != nil || p.aToB != size || p.bToA != 0 {
		t.Errorf("Pipe = %d, %d, %v; want %d, 0, nil", p.aToB, p.bToA, p.err, size)
	}
}
