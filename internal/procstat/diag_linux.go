package procstat

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"
)

// diagInode asks the kernel for the inode of the IPv4 TCP socket at local
// connected to remote, by its 4-tuple, over sock_diag (netlink; the
// kernel's include/uapi/linux/inet_diag.h). Unlike a read of
// /proc/net/tcp, which lists the table a page at a time and can skip a
// line while sockets come and go around it, it finds the one socket.
// found is false when there is no such socket (ENOENT) or it has no
// inode (an orphan); err when sock_diag cannot be asked.
func diagInode(local, remote netip.AddrPort) (inode string, found bool, err error) {
	if !local.Addr().Unmap().Is4() || !remote.Addr().Unmap().Is4() {
		return "", false, errors.New("sock_diag: IPv4 only")
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return "", false, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		return "", false, fmt.Errorf("sock_diag: %w", err)
	}
	// struct nlmsghdr (16 bytes), then struct inet_diag_req_v2 (56): family,
	// protocol, ext, pad, states, and struct inet_diag_sockid: sport and
	// dport (network order), src[4] and dst[4] (network order), if, and a
	// cookie of INET_DIAG_NOCOOKIE, which a lookup by 4-tuple without
	// NLM_F_DUMP requires.
	req := make([]byte, 16+56)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // seq
	r := req[16:]
	r[0], r[1] = unix.AF_INET, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 0xffffffff) // every state
	id := r[8:]
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	l4, r4 := local.Addr().Unmap().As4(), remote.Addr().Unmap().As4()
	copy(id[4:8], l4[:])
	copy(id[20:24], r4[:])
	ne.PutUint32(id[40:], 0xffffffff)
	ne.PutUint32(id[44:], 0xffffffff)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return "", false, fmt.Errorf("sock_diag: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return "", false, fmt.Errorf("sock_diag: %w", err)
	}
	if n < 16 {
		return "", false, fmt.Errorf("sock_diag: a reply of %d bytes", n)
	}
	switch typ := ne.Uint16(buf[4:]); typ {
	case unix.NLMSG_ERROR: // struct nlmsgerr: a negative errno first
		if n < 20 {
			return "", false, errors.New("sock_diag: a short error reply")
		}
		if errno := -int32(ne.Uint32(buf[16:])); errno == int32(unix.ENOENT) {
			return "", false, nil
		} else {
			return "", false, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
		}
	case unix.SOCK_DIAG_BY_FAMILY:
		// struct inet_diag_msg: family, state, timer, retrans, the sockid
		// (48 bytes), expires, rqueue, wqueue, uid, inode.
		if n < 16+72 {
			return "", false, fmt.Errorf("sock_diag: a reply of %d bytes", n)
		}
		ino := ne.Uint32(buf[16+68:])
		if ino == 0 {
			return "", false, nil
		}
		return strconv.FormatUint(uint64(ino), 10), true, nil
	default:
		return "", false, fmt.Errorf("sock_diag: a reply of type %d", typ)
	}
}
