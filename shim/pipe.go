package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Pipe joins a and b: it copies a to b and b to a until both directions
// end, then closes both connections, exactly once, and reports the bytes
// copied each way.
//
// A direction that reaches EOF half-closes its destination (CloseWrite) and
// the other direction keeps going, so a half-close propagates end to end. A
// direction that ends with an error closes both connections at once, which
// ends the other direction too. Cancelling ctx closes both at once.
//
// a and b are usually TCP connections; any net.Conn that can half-close
// (CloseWrite, as every connection of package transport can) will do. On
// Linux the copies between two TCP connections splice(2) from socket to
// socket through a pooled pipe held only while bytes are in flight
// (splice_linux.go), so an idle connection holds no pipe; other copies run
// io.Copy. err joins every
// error except EOF and the "use of closed network connection" that Pipe's
// own closing causes; it holds ctx's cause when cancellation ended the pipe.
func Pipe(ctx context.Context, a, b net.Conn) (aToB, bToA int64, err error) {
	return PipeProgress(ctx, a, b, nil, nil)
}

// Progress hears the bytes of one direction of a pipe as they are
// written, in chunks (at most spliceChunk when splicing); nil hears
// nothing. It is called from the direction's goroutine.
type Progress func(n int64)

// PipeProgress is Pipe, telling ab and ba of each direction's bytes as
// they pass (for counters of long-lived connections), not only when the
// pipe ends.
func PipeProgress(ctx context.Context, a, b net.Conn, ab, ba Progress) (aToB, bToA int64, err error) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		closeBoth()
	})

	toB := &copier{name: "a->b", dst: b, src: a, abort: closeBoth, progress: ab}
	toA := &copier{name: "b->a", dst: a, src: b, abort: closeBoth, progress: ba}
	var wg sync.WaitGroup
	wg.Add(2)
	go toB.run(&wg)
	toA.run(&wg) // in the caller's goroutine: one goroutine (and stack) less per pipe
	wg.Wait()

	cancelled := !stop()
	if cancelled {
		<-fired
	}
	closeBoth()

	var errs []error
	if cancelled {
		errs = append(errs, fmt.Errorf("pipe: %w", context.Cause(ctx)))
	}
	errs = append(errs, toB.err, toA.err)
	return toB.n, toA.n, errors.Join(errs...)
}

// copier is one direction of a Pipe; goroutines show up in stack dumps as
// shim.(*copier).run.
type copier struct {
	name     string
	dst, src net.Conn
	abort    func() // closes both connections
	progress Progress

	n   int64
	err error // nil on EOF; set before run returns
}

func (c *copier) run(wg *sync.WaitGroup) {
	defer wg.Done()
	n, err := copyConn(c.dst, c.src, c.progress)
	c.n = n
	if err == nil {
		// EOF: pass the half-close on and let the other direction go on.
		err = closeWrite(c.dst)
		if err == nil {
			return
		}
		err = fmt.Errorf("half-close: %w", err)
	}
	c.abort()
	if errors.Is(err, net.ErrClosed) {
		return // our own (or ctx's) closing
	}
	c.err = fmt.Errorf("pipe %s: %w", c.name, err)
}

// copyConn copies src to dst, by splice between TCP connections, telling
// progress of what it wrote.
func copyConn(dst, src net.Conn, progress Progress) (int64, error) {
	d, dok := dst.(*net.TCPConn)
	s, sok := src.(*net.TCPConn)
	if dok && sok {
		return copyTCP(d, s, progress)
	}
	return copyCounted(dst, src, progress)
}

// copyCounted is Copy, telling progress of each write.
func copyCounted(dst io.Writer, src io.Reader, progress Progress) (int64, error) {
	if progress != nil {
		dst = progressWriter{dst, progress}
	}
	return Copy(dst, src)
}

type progressWriter struct {
	w        io.Writer
	progress Progress
}

func (w progressWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	if n > 0 {
		w.progress(int64(n))
	}
	return n, err
}

// closeWrite half-closes c, or says why it cannot.
func closeWrite(c net.Conn) error {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("a %T cannot half-close", c)
	}
	return cw.CloseWrite()
}
