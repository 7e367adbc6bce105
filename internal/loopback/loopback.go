// Package loopback opens the TCP sockets that join two processes of one
// host (a combiner and its PTs, tor, the shims) without TCP keepalive.
//
// Go turns keepalive on for every TCP connection it dials or accepts: after
// 15 s idle, a probe every 15 s, each answered by an ACK. Between two
// processes of one host a probe learns nothing: when a process ends, the
// kernel closes its sockets and the peer hears FIN or RST at once, and a
// stopped process's kernel still answers. What the probes do cost: each
// socket's four setsockopt calls at setup, and, with many connections
// held, bursts of packets. Their timers fire together (the kernel's timer
// wheel rounds a 15 s timeout to 256 ms), and the probes and ACKs of one
// burst go through one CPU's loopback backlog, which holds
// net.core.netdev_max_backlog packets (1000 by default): ptbench's 10,000
// held 2-hop connections lost hundreds of packets every 256 ms that way
// (drop reason CPU_BACKLOG), among them SYNs and handshake segments of
// connections being set up, which then waited for a retransmission
// (docs/performance.md).
//
// Addresses that are not a loopback IP keep Go's default: a connection to
// another host may need keepalive to notice that the host is gone.
package loopback

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// KeepAlive is the keepalive period for net.Dialer and net.ListenConfig
// when dialling or listening on addr ("ip:port"): -1 (none) for a loopback
// IP, 0 (Go's default) for anything else, host names included.
func KeepAlive(addr string) time.Duration {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return 0
	}
	return keepAlive(ap.Addr())
}

func keepAlive(ip netip.Addr) time.Duration {
	if ip.Unmap().IsLoopback() {
		return -1
	}
	return 0
}

// Dialer is a net.Dialer for addr: without keepalive on loopback.
func Dialer(addr string) *net.Dialer {
	return &net.Dialer{KeepAlive: KeepAlive(addr)}
}

// ListenTCP is net.ListenTCP("tcp", addr), whose connections go without
// keepalive when addr is a loopback address.
func ListenTCP(addr *net.TCPAddr) (*net.TCPListener, error) {
	if addr == nil {
		addr = &net.TCPAddr{}
	}
	lc := net.ListenConfig{KeepAlive: keepAlive(addr.AddrPort().Addr())}
	ln, err := lc.Listen(context.Background(), "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// Probing reports whether c's socket has keepalive on (SO_KEEPALIVE), for
// tests.
func Probing(c syscall.Conn) (bool, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, err
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		v, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	}); err != nil {
		return false, err
	}
	return v != 0, serr
}
