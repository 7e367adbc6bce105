//go:build linux

package ptproc

import "syscall"

// sysProcAttr asks the kernel to send the child SIGTERM when its parent
// dies, as tor does (PROTOCOLS.md A23). It is only a backstop: the signal is
// tied to the thread that forked the child, not to the process
// (go.dev/issue/27505). startLocked forks from a thread locked to the
// calling goroutine for the duration of cmd.Start, so the fork does not
// migrate mid-start; Go only ends an OS thread when a goroutine exits while
// locked to it, which this package never does, so in practice the thread
// lives as long as the process. Close is the real mechanism.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
