//go:build !linux

package ptproc

import "syscall"

// sysProcAttr has no parent-death signal outside Linux; Close ends the
// child.
func sysProcAttr() *syscall.SysProcAttr { return nil }
