//go:build !linux

package shim

import (
	"net"
)

// copyTCP copies src to dst until src's EOF (nil error) or an error,
// telling progress of each write.
func copyTCP(dst, src *net.TCPConn, progress Progress) (int64, error) {
	return copyCounted(dst, src, progress)
}
