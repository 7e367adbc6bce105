package chain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/shim"
)

// strayPT is a SOCKS5 PT for one hop whose first request finds its shim
// taken: before it connects to the shim it is given, another connection
// (the stray, which it keeps open) connects first, so its own connection
// is refused and it replies 0x05, as a real PT would. Later requests are
// relayed as a plain TCP proxy would. The hop's outer side must be an
// echo: a byte echoed through a connection to the shim shows that the
// shim has accepted it, and so closed its listener.
type strayPT struct {
	ln *pt.SocksListener
	// honest: it connects to its shim itself and, once that connection
	// is carried, fails (0x01), as a PT whose own handshake failed does.
	honest bool

	mu     sync.Mutex
	asked  []string   // the shims it was asked to reach
	strays []net.Conn // the connections that took a shim (honest: its own), kept open
}

// carried says whether a byte written to c comes back: through a shim,
// that the shim accepted c and piped it to the echo outside.
func carried(c net.Conn) error {
	c.SetDeadline(time.Now().Add(eventCeiling))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return err
	}
	if b[0] != 'x' {
		return fmt.Errorf("echoed %q, want %q", b[0], 'x')
	}
	return nil
}

// keep holds c open until the test ends.
func (p *strayPT) keep(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.strays = append(p.strays, c)
}

func startStrayPT(t *testing.T, honest bool) *strayPT {
	t.Helper()
	ln, err := pt.ListenSocks("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &strayPT{ln: ln, honest: honest}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.strays {
			c.Close()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.AcceptSocks()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.serve(conn)
			}()
		}
	}()
	return p
}

func (p *strayPT) serve(conn *pt.SocksConn) {
	defer conn.Close()
	target := conn.Req.Target
	p.mu.Lock()
	p.asked = append(p.asked, target)
	first := len(p.asked) == 1
	p.mu.Unlock()
	if p.honest || first {
		c, err := net.Dial("tcp", target)
		if err == nil {
			p.keep(c)
			err = carried(c)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "strayPT: the first connection to the shim:", err)
			conn.RejectReason(pt.SocksRepGeneralFailure)
			return
		}
		if p.honest {
			conn.RejectReason(pt.SocksRepGeneralFailure)
			return
		}
	}
	remote, err := net.Dial("tcp", target)
	if err != nil {
		conn.RejectReason(pt.SocksRepConnectionRefused) // the stray's shim: closed
		return
	}
	defer remote.Close()
	if conn.Grant(nil) != nil {
		return
	}
	go io.Copy(remote, conn)
	io.Copy(conn, remote)
}

// A PT refused by its shim, because another local connection took the
// shim's one accept, is asked again with a new shim; the connection that
// took the first is closed once the PT's refusal arrives, and only the
// PT's own connection is carried on.
func TestShimTakenIsRetried(t *testing.T) {
	p := startStrayPT(t, false)
	echo := plainEcho(t)
	logs := &logBuf{}
	life, cancel := context.WithCancel(context.Background())
	var pipes sync.WaitGroup
	t.Cleanup(func() { cancel(); pipes.Wait() })
	h := ptHop{proxy: p.ln.Addr().String(), life: life, pipes: &pipes, linger: time.Second, log: newLogger(logs)}
	var d net.Dialer
	under := func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }

	ctx, stop := context.WithTimeout(context.Background(), eventCeiling)
	defer stop()
	conn, err := h.Dial(ctx, nil, echo, under)
	if err != nil {
		t.Fatalf("dial: %v; logs: %s", err, logs)
	}
	defer conn.Close()
	echoOnce(t, conn, 1000)

	p.mu.Lock()
	asked, strays := append([]string(nil), p.asked...), append([]net.Conn(nil), p.strays...)
	p.mu.Unlock()
	if len(asked) != 2 || asked[0] == asked[1] {
		t.Errorf("the PT was asked for %q; want two different shims", asked)
	}
	if len(strays) != 1 {
		t.Fatalf("%d connections took a shim; want 1", len(strays))
	}
	strays[0].SetReadDeadline(time.Now().Add(eventCeiling))
	if n, err := strays[0].Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the connection that took the shim read %d bytes, %v; want it closed (EOF)", n, err)
	}
	if log := logs.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "another local connection must have taken") ||
		!strings.Contains(log, "taken_by="+strays[0].LocalAddr().String()) {
		t.Errorf("no warning naming the connection that took the shim; logs: %s", log)
	}
}

// A PT that reached its shim and failed on its own (its socket is in the
// process the hop names) is asked once. Named as another process's, the
// same PT's connection is provably not the PT's, and the hop asks again
// with a new shim as often as shimRetries allows: the check is what tells
// the two apart.
func TestShimNotTakenIsNotRetried(t *testing.T) {
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	for _, tc := range []struct {
		name  string
		pid   int
		asked int
	}{
		{"the PT's own connection", os.Getpid(), 1},
		{"a connection the PT does not hold", other.Process.Pid, 1 + shimRetries},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startStrayPT(t, true)
			echo := plainEcho(t)
			life, cancel := context.WithCancel(context.Background())
			var pipes sync.WaitGroup
			t.Cleanup(func() { cancel(); pipes.Wait() })
			h := ptHop{proxy: p.ln.Addr().String(), life: life, pipes: &pipes, linger: time.Second, pid: tc.pid}
			var d net.Dialer
			under := func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
			ctx, stop := context.WithTimeout(context.Background(), eventCeiling)
			defer stop()
			conn, err := h.Dial(ctx, nil, echo, under)
			if err == nil {
				conn.Close()
				t.Fatal("dial succeeded through a PT that fails")
			}
			var reply *shim.ReplyError
			if !errors.As(err, &reply) || reply.Code != shim.RepGeneralFailure {
				t.Errorf("dial: %v; want the PT's own 0x01", err)
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if len(p.asked) != tc.asked {
				t.Errorf("the PT was asked %d times; want %d", len(p.asked), tc.asked)
			}
		})
	}
}

// The same with obfs4proxy as the PT inside another hop: its reply when
// its shim is taken is what the retry goes by.
func TestShimTakenObfs4proxy(t *testing.T) {
	echo := plainEcho(t)
	bridge, args := obfs4proxyBridge(t, echo, "obfs4", "obfs4")
	cli := clientOf(t, "ClientTransportPlugin obfs4 exec OBFS4PROXY\nAlias c obfs4|obfs4\n", 20*time.Second, "c")
	var (
		mu     sync.Mutex
		strays []net.Conn
	)
	shimListening = func(a *net.TCPAddr) {
		mu.Lock()
		defer mu.Unlock()
		if len(strays) > 0 {
			return
		}
		if c, err := net.Dial("tcp", a.String()); err == nil {
			strays = append(strays, c)
		}
	}
	t.Cleanup(func() {
		shimListening = nil
		for _, c := range strays {
			c.Close()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
	defer cancel()
	conn, err := cli.Dial(ctx, "c", bridge, args)
	if err != nil {
		t.Fatalf("dial with its first shim taken: %v", err)
	}
	if err := roundTrip(conn, 1<<20); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(strays) != 1 {
		t.Fatalf("%d connections took a shim; want 1", len(strays))
	}
	strays[0].SetReadDeadline(time.Now().Add(eventCeiling))
	if n, err := strays[0].Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the connection that took the shim read %d bytes, %v; want it closed (EOF)", n, err)
	}
}
