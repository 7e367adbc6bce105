package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// timerSocket is one of a process's TCP sockets with its timer, from /proc/net/tcp.
type timerSocket struct {
	local, remote string // hex ip:port, as /proc writes them
	localPort     int
	state         string // hex: 01 is ESTABLISHED
	timer         int    // "tr": 1 a retransmission timer, 2 sk_timer (TCP keepalive's)
}

// timerSockets lists pid's TCP sockets over IPv4 and IPv6.
func timerSockets(t *testing.T, pid int) []timerSocket {
	t.Helper()
	inodes := map[string]bool{}
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if inode, ok := strings.CutPrefix(l, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	var out []timerSocket
	for _, file := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 || !inodes[fl[9]] {
				continue
			}
			_, portHex, _ := strings.Cut(fl[1], ":")
			port, _ := strconv.ParseInt(portHex, 16, 32)
			trHex, _, _ := strings.Cut(fl[5], ":")
			tr, _ := strconv.ParseInt(trHex, 16, 32)
			out = append(out, timerSocket{local: fl[1], remote: fl[2], localPort: int(port), state: fl[3], timer: int(tr)})
		}
		f.Close()
	}
	return out
}

// probing lists pid's established TCP sockets with a keepalive timer,
// except those on the local port skip (0: none). /proc shows one timer per
// socket, a retransmission timer (armed until the last bytes sent are
// acknowledged, which a delayed ACK may hold back) before keepalive's, so
// it reads again while one is armed, for up to 5 s.
func probing(t *testing.T, pid, skip int) (probing []string, established int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		probing, established = nil, 0
		hidden := false
		for _, s := range timerSockets(t, pid) {
			if s.state != "01" || s.localPort == skip {
				continue
			}
			established++
			switch s.timer {
			case 1:
				hidden = true
			case 2:
				probing = append(probing, s.local+"->"+s.remote)
			}
		}
		if !hidden || time.Now().After(deadline) {
			return probing, established
		}
	}
}

// TestLoopbackKeepaliveOff: while a 2-hop chained connection is open, none
// of ptcombiner-client's sockets and none of ptcombiner-server's but the
// client's on its public port has a TCP keepalive timer. They all join
// processes of one host, where a probe learns nothing, and the probes of
// 10,000 held connections came in bursts that overflowed the loopback
// backlog and dropped SYNs (internal/loopback, docs/performance.md).
func TestLoopbackKeepaliveOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("client", func(t *testing.T) {
		echo := echoServer(t)
		bridge, args := serverChain(t, echo, testHops(2))
		c := startCombiner(t, []string{"t2"}, testpFlags()...)
		conn, err := c.dial(ctx, "t2", bridge, args)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		echoOne(t, conn, []byte("x"))
		// The application's, both PT SOCKS connections, the shim's.
		got, n := probing(t, c.proc.Pid(), 0)
		if n < 4 || len(got) > 0 {
			t.Errorf("ptcombiner-client: %d established sockets, want >= 4; with keepalive: %v", n, got)
		}
	})

	t.Run("server", func(t *testing.T) {
		ft := startFakeTor(t, "t2")
		sc := startServerCombiner(t, ft, []string{"t2"}, nil, "--plugin", "test="+bin("testpt"), "--chain", "t2=test|test")
		public := sc.methods["t2"].Addr
		raw, err := net.DialTimeout("tcp", public.String(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn := raw.(*net.TCPConn)
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		s, err := newTestptStream(conn, []byte{90, 90})
		if err != nil {
			t.Fatal(err)
		}
		line := []byte("ID " + conn.LocalAddr().String() + "\n")
		echoOne(t, s, line)
		// Into each child, from each child's Extended ORPort, to tor's.
		got, n := probing(t, sc.proc.Pid(), public.Port)
		if n < 5 || len(got) > 0 {
			t.Errorf("ptcombiner-server: %d established loopback sockets, want >= 5; with keepalive: %v", n, got)
		}
		ft.check(t, 1)
	})
}

// echoOne writes b through rw and reads it back: the connection is then up
// end to end.
func echoOne(t *testing.T, rw interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
}, b []byte) {
	t.Helper()
	if _, err := rw.Write(b); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(b))
	for n := 0; n < len(b); {
		m, err := rw.Read(got[n:])
		if err != nil {
			t.Fatalf("echo: %v", err)
		}
		n += m
	}
	if string(got) != string(b) {
		t.Fatalf("echo %q, want %q", got, b)
	}
}
