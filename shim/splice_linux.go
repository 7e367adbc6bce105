package shim

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Linux splice(2) between two TCP connections, holding a pipe only while
// bytes are in flight.
//
// io.Copy between two *net.TCPConn splices too, but it takes a pipe (two
// descriptors, and up to 1 MiB of kernel buffer) for the whole life of the
// copy, idle or not: a chained connection of n hops then holds 2n pipes (4n
// descriptors) in the client and 2(n+1) in the server while it waits for its
// next cell.
// Here a pipe comes from a pool when the source has bytes to read and goes
// back, empty, as soon as the source would block, so idle connections hold
// sockets only. The system calls per chunk are the same as io.Copy's: one
// splice in, one or more out, and the splice in that meets EAGAIN.

const (
	// spliceChunk is the most one splice moves into the pipe, and the pipe's
	// size when the kernel allows it (as io.Copy's splice does).
	spliceChunk = 1 << 20
)

// kernelPipe is a non-blocking pipe used to splice one chunk at a time.
// At any moment it is owned by one splicer (while bytes are in flight) or by
// freePipes; whoever owns it last closes it.
type kernelPipe struct{ r, w int }

// maxFreePipes bounds the empty pipes kept for reuse. A pipe is busy only
// from the splice that fills it to the one that finds its source empty, so
// the pipes changing hands at once are about as many as the directions
// running or runnable at that moment; 32 covers ptbench's 8 streams through
// 3 hops without making pipes anew, and keeps at most 64 descriptors idle.
// Each 1 MiB pipe counts 256 pages against the per-user
// fs.pipe-user-pages-soft (16384 by default), which the PT children share.
const maxFreePipes = 32

// freePipes holds empty pipes. Unlike a sync.Pool it never leaves a pipe to
// the garbage collector, which closed it only after a collection the
// descriptors cannot hasten: under -race, where a sync.Pool drops a quarter
// of what it is given, chain's 20,000-connection test ran out of 1024
// descriptors in its warm-up, 586 of them pipes; it now peaks at 321 with 50
// connections in flight. A pipe given back beyond the bound is closed at once.
var freePipes = struct {
	sync.Mutex
	list []*kernelPipe
}{list: make([]*kernelPipe, 0, maxFreePipes)}

// getPipe takes an empty pipe from freePipes or makes one; nil when the
// system will not make one (out of descriptors).
func getPipe() *kernelPipe {
	freePipes.Lock()
	if n := len(freePipes.list); n > 0 {
		p := freePipes.list[n-1]
		freePipes.list[n-1] = nil
		freePipes.list = freePipes.list[:n-1]
		freePipes.Unlock()
		return p
	}
	freePipes.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil
	}
	// A smaller pipe (the limit is per user: fs.pipe-user-pages-soft) only
	// costs more system calls.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, spliceChunk)
	return &kernelPipe{r: fds[0], w: fds[1]}
}

// putPipe gives back an empty pipe: kept for reuse, or closed when
// freePipes is full.
func putPipe(p *kernelPipe) {
	freePipes.Lock()
	if len(freePipes.list) < maxFreePipes {
		freePipes.list = append(freePipes.list, p)
		p = nil
	}
	freePipes.Unlock()
	if p != nil {
		p.close()
	}
}

// close closes both ends. A pipe that may still hold bytes is closed, never
// given back.
func (p *kernelPipe) close() {
	syscall.Close(p.r)
	syscall.Close(p.w)
}

// splicer is one direction's state. Its methods are bound to it once (in
// newSplicer), so the copy loop allocates nothing per chunk.
type splicer struct {
	src, dst syscall.RawConn
	pipe     *kernelPipe
	inPipe   int   // bytes in the pipe, not yet written to dst
	eof      bool  // the source ended
	err      error // the last splice's error
	noPipe   bool  // the pool could not make a pipe

	fill, drain func(fd uintptr) bool
}

func newSplicer(dst, src *net.TCPConn) (*splicer, error) {
	rs, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	rd, err := dst.SyscallConn()
	if err != nil {
		return nil, err
	}
	s := &splicer{src: rs, dst: rd}
	s.fill = s.fillOnce
	s.drain = s.drainOnce
	return s, nil
}

// fillOnce is called by src's RawConn.Read each time src may be readable:
// it takes a pipe, splices what src has into it, and when src has nothing
// yet gives the pipe back and asks to wait (false).
func (s *splicer) fillOnce(fd uintptr) bool {
	if s.pipe == nil {
		if s.pipe = getPipe(); s.pipe == nil {
			s.noPipe = true
			return true
		}
	}
	for {
		n, err := rawSplice(int(fd), s.pipe.w, spliceChunk)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			putPipe(s.pipe) // empty: every byte went to dst already
			s.pipe = nil
			return false
		case err != nil:
			s.err = os.NewSyscallError("splice", err)
		case n == 0:
			s.eof = true
		default:
			s.inPipe = int(n)
		}
		return true
	}
}

// drainOnce is called by dst's RawConn.Write each time dst may be writable:
// it splices the pipe's bytes out, and asks to wait (false) while dst is full.
func (s *splicer) drainOnce(fd uintptr) bool {
	for s.inPipe > 0 {
		n, err := rawSplice(s.pipe.r, int(fd), s.inPipe)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			s.err = os.NewSyscallError("splice", err)
			return true
		case n == 0: // the pipe holds fewer bytes than counted: never loop on it
			s.err = errors.New("splice: pipe drained early")
			return true
		}
		s.inPipe -= int(n)
	}
	return true
}

// copyTCP copies src to dst until src's EOF (nil error) or an error, by
// splice, telling progress of each chunk written; where splice cannot be
// used it goes on with io.Copy.
func copyTCP(dst, src *net.TCPConn, progress Progress) (int64, error) {
	n, err := spliceCopy(dst, src, progress)
	if errors.Is(err, errNoSplice) {
		m, err := copyCounted(dst, src, progress)
		return n + m, err
	}
	return n, err
}

// errNoSplice says that splice cannot go on; nothing was lost.
var errNoSplice = errors.New("splice unavailable")

func spliceCopy(dst, src *net.TCPConn, progress Progress) (written int64, err error) {
	s, err := newSplicer(dst, src)
	if err != nil {
		return 0, errNoSplice
	}
	defer func() {
		if s.pipe != nil {
			if s.inPipe == 0 {
				putPipe(s.pipe)
			} else {
				s.pipe.close()
			}
		}
	}()
	for {
		if rerr := s.src.Read(s.fill); rerr != nil {
			return written, rerr
		}
		switch {
		case s.noPipe:
			return written, errNoSplice
		case s.err != nil:
			if errors.Is(s.err, syscall.EINVAL) {
				return written, errNoSplice // the kernel cannot splice these
			}
			return written, s.err
		case s.eof:
			return written, nil
		}
		n := s.inPipe
		werr := s.dst.Write(s.drain)
		written += int64(n - s.inPipe)
		if progress != nil && n > s.inPipe {
			progress(int64(n - s.inPipe))
		}
		if werr != nil {
			return written, werr
		}
		if s.err != nil {
			return written, s.err
		}
	}
}

// rawSplice splices up to max bytes from in to out through
// syscall.RawSyscall6, without telling the scheduler it entered a system
// call. Neither end can block (Go's sockets are O_NONBLOCK; the pipe end is
// SPLICE_F_NONBLOCK), so the call holds its P as briefly as user code
// would. Through syscall.Splice, a splice out that runs the receiver's
// loopback TCP work inline (tens of microseconds) outlasts sysmon's 20 us
// and has its P handed to another thread. On a 2-hop test-PT chain
// (ptbench, the same load both ways) syscall.Splice cost ptcombiner-client
// 9,068 futex calls, 10,155 nanosleeps and 29,859 context switches; this
// costs 3,008, 1,401 and 17,475, and 6% less CPU (ptcombiner-server 12%).
func rawSplice(in, out, max int) (int, error) {
	n, _, errno := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(max), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	if errno != 0 {
		return int(n), errno
	}
	return int(n), nil
}
