//go:build !linux

package shim

import (
	"io"
	"net"
)

// copyTCP copies src to dst until src's EOF (nil error) or an error.
func copyTCP(dst, src *net.TCPConn) (int64, error) { return io.Copy(dst, src) }
