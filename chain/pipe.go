package chain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/ptcombiner/ptcombiner/shim"
)

// tcpConn is a connection of this package that runs straight over a TCP
// connection: ptConn, and Conn when its innermost hop is a PT.
type tcpConn interface{ tcp() *net.TCPConn }

// tcpOf returns the TCP connection c is, or runs straight over, or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	switch c := c.(type) {
	case *net.TCPConn:
		return c
	case tcpConn:
		return c.tcp()
	}
	return nil
}

// pipe joins a and b until both directions end, as shim.Pipe does: a
// direction that reaches EOF half-closes its destination, an error or ctx
// closes both. When both are TCP connections underneath it splices
// (shim.PipeProgress), telling splicedAB and splicedBA (nil: nobody) of
// the bytes it moves past a's and b's own Read and Write; otherwise (an
// in-process hop's connection) it copies through them. Both a and b are
// closed, through their own Close, when it returns.
func pipe(ctx context.Context, a, b net.Conn, splicedAB, splicedBA shim.Progress) (aToB, bToA int64, err error) {
	if ta, tb := tcpOf(a), tcpOf(b); ta != nil && tb != nil {
		aToB, bToA, err = shim.PipeProgress(ctx, ta, tb, splicedAB, splicedBA)
		a.Close() // the wrappers' own ends: a hop's linger starts
		b.Close()
		return aToB, bToA, err
	}
	return copyPipe(ctx, a, b)
}

// copyPipe is pipe for connections that are not both TCP.
func copyPipe(ctx context.Context, a, b net.Conn) (aToB, bToA int64, err error) {
	var once sync.Once
	closeBoth := func() { once.Do(func() { a.Close(); b.Close() }) }
	stop := context.AfterFunc(ctx, closeBoth)
	var errAB error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		aToB, errAB = copyHalf(b, a, closeBoth)
	}()
	bToA, errBA := copyHalf(a, b, closeBoth)
	wg.Wait()
	cancelled := !stop()
	closeBoth()
	var errs []error
	if cancelled {
		errs = append(errs, fmt.Errorf("pipe: %w", context.Cause(ctx)))
	}
	return aToB, bToA, errors.Join(append(errs, errAB, errBA)...)
}

// copyHalf copies src to dst; at EOF it half-closes dst (or, when dst
// cannot, closes both), on an error it closes both.
func copyHalf(dst, src net.Conn, closeBoth func()) (int64, error) {
	n, err := shim.Copy(dst, src) // an idle connection holds no large buffer
	if err == nil {
		cw, ok := dst.(interface{ CloseWrite() error })
		if !ok {
			closeBoth()
			return n, nil
		}
		if err = cw.CloseWrite(); err == nil {
			return n, nil
		}
		err = fmt.Errorf("half-close: %w", err)
	}
	closeBoth()
	if errors.Is(err, net.ErrClosed) {
		return n, nil // our own (or ctx's) closing
	}
	return n, err
}
