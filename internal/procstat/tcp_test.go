package procstat

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
)

// connected is a loopback connection, dialled and accepted; both ends and
// the listener close with the test.
func connected(t *testing.T) (dialled, accepted net.Conn, ln net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return c, a, ln
}

func TestEstablishedTo(t *testing.T) {
	c, _, ln := connected(t)
	want := c.LocalAddr().(*net.TCPAddr).AddrPort()
	got := EstablishedTo(ln.Addr().(*net.TCPAddr).AddrPort())
	if !slices.Equal(got, []netip.AddrPort{want}) {
		t.Errorf("EstablishedTo(%v) = %v, want [%v] (the dialler, not the accepted side)", ln.Addr(), got, want)
	}
}

// A line the kernel wrote twice (a socket shifted across a page boundary
// while the file was read) is one socket.
func TestEstablishedToListsASocketOnce(t *testing.T) {
	const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:DB60 0100007F:9BED 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1
   1: 0100007F:DB60 0100007F:9BED 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:DB61 0100007F:9BED 06 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`
	got := establishedTo(table, netip.MustParseAddrPort("127.0.0.1:39917"))
	if want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:56160")}; !slices.Equal(got, want) {
		t.Errorf("establishedTo = %v, want %v", got, want)
	}
}

// A socket is owned by the process that holds it, and by an ancestor of
// that process; not by another; and a socket that is gone is unknown.
func TestSocketOwner(t *testing.T) {
	c, _, ln := connected(t)
	local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), ln.Addr().(*net.TCPAddr).AddrPort()
	if owned, known := SocketOwner(os.Getpid(), local, remote); !owned || !known {
		t.Errorf("SocketOwner(self) = %v, %v; want owned, known", owned, known)
	}
	// A wrapper whose child holds the socket, and that has closed its own
	// descriptor of it, as a PT started through a script does. Its stdin
	// closing makes it end its child and wait for it.
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	wrapper := exec.Command("sh", "-c", "sleep 60 & exec 3<&-; echo ready; read x; kill $!; wait")
	wrapper.ExtraFiles = []*os.File{f}
	in, err := wrapper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := wrapper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := wrapper.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		in.Close()
		wrapper.Wait()
		t.Fatalf("the wrapper said %q, %v", line, err)
	}
	owned, known := SocketOwner(wrapper.Process.Pid, local, remote)
	in.Close()
	if err := wrapper.Wait(); err != nil {
		t.Errorf("the wrapper: %v", err)
	}
	if !owned || !known {
		t.Errorf("SocketOwner(a wrapper whose child holds it) = %v, %v; want owned, known", owned, known)
	}
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	if owned, known := SocketOwner(other.Process.Pid, local, remote); owned || !known {
		t.Errorf("SocketOwner(another process) = %v, %v; want not owned, known", owned, known)
	}
	if owned, known := SocketOwner(os.Getpid(), remote, local); !owned || !known {
		t.Errorf("SocketOwner of the accepted end = %v, %v; want owned, known", owned, known)
	}
	c.Close()
	if owned, known := SocketOwner(os.Getpid(), local, remote); owned || known {
		t.Errorf("SocketOwner of a closed socket = %v, %v; want unknown", owned, known)
	}
}

func TestSocketInode(t *testing.T) {
	table := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 0100007F:1F90 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1\n" +
		"   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n"
	a, b := netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:8080")
	if got := socketInode(table, a, b); got != "4242" {
		t.Errorf("socketInode = %q, want 4242", got)
	}
	if got := socketInode(table, b, a); got != "" {
		t.Errorf("socketInode of an orphan (inode 0) = %q, want none", got)
	}
}

// sock_diag finds a live socket by its 4-tuple, with the inode the table
// lists, and finds none for a 4-tuple nobody holds.
func TestDiagInode(t *testing.T) {
	c, _, ln := connected(t)
	local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), ln.Addr().(*net.TCPAddr).AddrPort()
	inode, found, err := diagInode(local, remote)
	if err != nil || !found {
		t.Fatalf("diagInode of a live socket: %q, %v, %v", inode, found, err)
	}
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	if want := socketInode(string(table), local, remote); inode != want {
		t.Errorf("sock_diag says inode %s, /proc/net/tcp %s", inode, want)
	}
	if _, found, err := diagInode(netip.MustParseAddrPort("127.0.0.1:1"), remote); found || err != nil {
		t.Errorf("diagInode of a 4-tuple nobody holds: found %v, %v", found, err)
	}
}
