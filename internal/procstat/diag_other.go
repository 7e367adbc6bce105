//go:build !linux

package procstat

import (
	"errors"
	"net/netip"
)

// diagInode needs Linux's sock_diag.
func diagInode(local, remote netip.AddrPort) (string, bool, error) {
	return "", false, errors.New("sock_diag: Linux only")
}
