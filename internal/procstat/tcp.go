package procstat

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// EstablishedTo lists the local address of every established IPv4 TCP
// connection of this network namespace whose remote end is remote: the
// sockets that dialled it, as the listener saw them (from /proc/net/tcp).
// The kernel writes that file a page at a time, and a socket that comes or
// goes between two reads can shift a line into the next page and list it
// twice; a 4-tuple names one established socket, so each is listed once.
func EstablishedTo(remote netip.AddrPort) []netip.AddrPort {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil
	}
	return establishedTo(string(b), remote)
}

// establishedTo is EstablishedTo over table, /proc/net/tcp's text.
func establishedTo(table string, remote netip.AddrPort) []netip.AddrPort {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	var out []netip.AddrPort
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[3] != "01" { // st 01: TCP_ESTABLISHED
			continue
		}
		local, lok := parseProcAddr(f[1])
		rem, rok := parseProcAddr(f[2])
		if lok && rok && rem == remote && !slices.Contains(out, local) {
			out = append(out, local)
		}
	}
	return out
}

// parseProcAddr parses /proc/net/tcp's "0100007F:1F90": the IPv4 address
// as the kernel's 32-bit word in host byte order, then the port, in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok || len(h) != 8 {
		return netip.AddrPort{}, false
	}
	word, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	var ip [4]byte
	binary.NativeEndian.PutUint32(ip[:], uint32(word))
	return netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(port)), true
}

// SocketOwner says whether the IPv4 TCP socket at local connected to
// remote is held open by pid or one of its descendants (a PT started
// through a wrapper holds its sockets in a child). known is false when
// /proc cannot tell: no such socket (it is gone, or only its TIME_WAIT is
// left), or no /proc.
func SocketOwner(pid int, local, remote netip.AddrPort) (owned, known bool) {
	inode, found, err := diagInode(local, remote)
	if err != nil { // no sock_diag: the table, which may miss it
		b, rerr := os.ReadFile("/proc/net/tcp")
		if rerr != nil {
			return false, false
		}
		inode = socketInode(string(b), local, remote)
		found = inode != ""
	}
	if !found {
		return false, false
	}
	link := "socket:[" + inode + "]"
	seen := map[int]bool{}
	for todo := []int{pid}; len(todo) > 0; {
		p := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		dir := fmt.Sprintf("/proc/%d/fd", p)
		entries, err := os.ReadDir(dir)
		if err != nil && p == pid {
			return false, false
		}
		for _, e := range entries {
			if l, _ := os.Readlink(dir + "/" + e.Name()); l == link {
				return true, true
			}
		}
		todo = append(todo, Children(p)...)
	}
	return false, true
}

// socketInode is the inode of the socket at local connected to remote in
// table, /proc/net/tcp's text; "" when there is none that has one.
func socketInode(table string, local, remote netip.AddrPort) string {
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		l, lok := parseProcAddr(f[1])
		r, rok := parseProcAddr(f[2])
		if lok && rok && l == local && r == remote && f[9] != "0" {
			return f[9]
		}
	}
	return ""
}
