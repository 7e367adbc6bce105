package shim

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// getPipe's pipes are what the splicer counts on: non-blocking and
// close-on-exec ends, and a buffer of spliceChunk where the system allows
// one that large.
func TestGetPipeFlagsAndSize(t *testing.T) {
	p := getPipe()
	if p == nil {
		t.Fatal("getPipe: no pipe")
	}
	defer p.close()
	for _, fd := range []int{p.r, p.w} {
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil || fl&unix.O_NONBLOCK == 0 {
			t.Errorf("fd %d: flags %#x, %v: want O_NONBLOCK", fd, fl, err)
		}
		fdfl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || fdfl&unix.FD_CLOEXEC == 0 {
			t.Errorf("fd %d: descriptor flags %#x, %v: want FD_CLOEXEC", fd, fdfl, err)
		}
	}
	size, err := unix.FcntlInt(uintptr(p.r), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err == nil {
		if max, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && max < spliceChunk {
			t.Skipf("fs.pipe-max-size is %d, below %d", max, spliceChunk)
		}
	}
	if size == spliceChunk {
		return
	}
	// The per-user fs.pipe-user-pages-soft may be used up by the pipes of
	// other tests and processes: the kernel then refuses with EPERM, and the
	// splicer only makes more calls. Any other cause is a defect.
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if _, err := unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, spliceChunk); err == unix.EPERM {
		t.Skipf("pipe size %d: the per-user pipe limit is reached", size)
	}
	t.Errorf("pipe size %d, want %d", size, spliceChunk)
}
