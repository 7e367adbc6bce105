package chain

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// recorder is an Observer that counts what it hears.
type recorder struct {
	mu sync.Mutex
	counts
}

type counts struct {
	opened, established, closed    int
	failed                         map[string]int // "hop/reason"
	up, down                       int64
	ext                            map[string]int // "peer/outcome"
	children                       map[string]int // "child/kind"
	setupNonPositive, closedBefore int
}

func newRecorder() *recorder {
	return &recorder{counts: counts{failed: map[string]int{}, ext: map[string]int{}, children: map[string]int{}}}
}

func (r *recorder) ConnOpened(string) { r.mu.Lock(); r.opened++; r.mu.Unlock() }
func (r *recorder) ConnFailed(_ string, hop int, reason FailReason) {
	r.mu.Lock()
	r.failed[fmt.Sprintf("%d/%s", hop, reason)]++
	r.mu.Unlock()
}
func (r *recorder) ConnEstablished(_ string, setup time.Duration) {
	r.mu.Lock()
	r.established++
	if setup <= 0 {
		r.setupNonPositive++
	}
	r.mu.Unlock()
}
func (r *recorder) ConnBytes(_ string, up, down int64) {
	r.mu.Lock()
	r.up += up
	r.down += down
	r.mu.Unlock()
}
func (r *recorder) ConnClosed(string) {
	r.mu.Lock()
	r.closed++
	if r.closed > r.opened {
		r.closedBefore++
	}
	r.mu.Unlock()
}
func (r *recorder) ChildEvent(_, child string, k EventKind) {
	r.mu.Lock()
	r.children[child+"/"+string(k)]++
	r.mu.Unlock()
}
func (r *recorder) ExtORPort(p ExtORPeer, o ExtOROutcome) {
	r.mu.Lock()
	r.ext[p.String()+"/"+o.String()]++
	r.mu.Unlock()
}

// ended waits until every opened connection is closed, and returns the
// counts.
func (r *recorder) ended(t *testing.T) counts {
	t.Helper()
	waitFor(t, "every observed connection closed", eventCeiling, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.opened > 0 && r.closed == r.opened
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts
}

// Both engines report to their Observer, with in-process hops (no child):
// every connection opened once and closed once, established or failed at
// the hop to blame, and the payload both ways. The client blames hop 1 (the
// outer in-process hop, which dials the bridge) when the bridge refuses;
// the server blames dest when its TCP service refuses.
func TestObserverInProcess(t *testing.T) {
	service, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer service.Close()
	go func() {
		for {
			c, err := service.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	// Port 1, outside the ephemeral range: a freed port could be handed to
	// a one-use shim meanwhile.
	const closedPort = "127.0.0.1:1"

	var cfg Config
	for _, err := range []error{cfg.AddBuiltinFlag("obfs3,obfs4"), cfg.AddChainFlag("o=obfs3|obfs4"), cfg.Validate()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	serve := func(orport string) (*recorder, Published) {
		rec := newRecorder()
		s := NewServer(ServerOptions{Config: &cfg, StateDir: t.TempDir(), TorORPort: orport, Observer: rec})
		t.Cleanup(func() { s.Close() })
		pub, err := s.Start(context.Background(), []Bind{{Alias: "o", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
		if err != nil || pub[0].Err != nil {
			t.Fatal(err, pub)
		}
		return rec, pub[0]
	}
	srv, pub := serve(service.Addr().String())
	deadSrv, deadPub := serve(closedPort)
	cli := newRecorder()
	client := NewClient(ClientOptions{Config: &cfg, StateDir: t.TempDir(), Observer: cli})
	defer client.Close()

	var sent int64
	for i := range 5 {
		conn, err := client.Dial(context.Background(), "o", pub.Addr.String(), pub.Args)
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 1000*(i+1))
		conn.Write(msg)
		if _, err := io.ReadFull(conn, msg); err != nil {
			t.Fatal(err)
		}
		sent += int64(len(msg))
		conn.Close()
	}
	if _, err := client.Dial(context.Background(), "o", closedPort, pub.Args); err == nil {
		t.Fatal("a dial to a closed port succeeded")
	}
	// The dead server's client connection is established on the client,
	// and fails on the server when its service refuses.
	if conn, err := client.Dial(context.Background(), "o", deadPub.Addr.String(), deadPub.Args); err == nil {
		conn.SetDeadline(time.Now().Add(eventCeiling))
		conn.Read(make([]byte, 1)) // ends when the server closes it
		conn.Close()
	} else {
		t.Fatal(err)
	}

	c := cli.ended(t)
	if c.opened != 7 || c.established != 6 || c.closed != 7 || fmt.Sprint(c.failed) != "map[1/refused:1]" || c.up != sent || c.down != sent {
		t.Errorf("client observed %d opened, %d established, %d closed, failures %v, %d bytes up, %d down (sent %d each way)",
			c.opened, c.established, c.closed, c.failed, c.up, c.down, sent)
	}
	s := srv.ended(t)
	if s.opened != 5 || s.established != 5 || len(s.failed) != 0 || s.up != sent || s.down != sent || len(s.ext) != 0 {
		t.Errorf("server observed %d opened, %d established, failures %v, %d bytes up, %d down (sent %d each way), Extended ORPort %v",
			s.opened, s.established, s.failed, s.up, s.down, sent, s.ext)
	}
	d := deadSrv.ended(t)
	if d.opened != 1 || d.established != 0 || fmt.Sprint(d.failed) != "map[-2/refused:1]" {
		t.Errorf("server to a refusing service observed %d opened, %d established, failures %v", d.opened, d.established, d.failed)
	}
	for _, r := range []counts{c, s, d} {
		if r.setupNonPositive > 0 || r.closedBefore > 0 || len(r.children) > 0 {
			t.Errorf("%d setups of no time, %d closes before their open, child events %v", r.setupNonPositive, r.closedBefore, r.children)
		}
	}
}

// reasonOf classifies the errors a setup meets.
func TestReasonOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want FailReason
	}{
		{downError{fmt.Errorf("exited")}, ReasonDown},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), ReasonTimeout},
		{&net.OpError{Op: "dial", Err: fmt.Errorf("wrapped: %w", errConnRefused())}, ReasonRefused},
		{io.ErrUnexpectedEOF, ReasonClosed},
		{context.Canceled, ReasonClosed},
		{fmt.Errorf("something else"), ReasonOther},
	} {
		if got := reasonOf(tc.err); got != tc.want {
			t.Errorf("reasonOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// errConnRefused is a real refusal from the kernel, from port 1, where
// nothing listens.
func errConnRefused() error {
	_, err := net.Dial("tcp", "127.0.0.1:1")
	return err
}

// A stream handed to ServerOptions.Streams (a --free server's sessions) is
// established when handed over and its payload counted as it passes, as
// one towards tor is: without that a free bridge's metrics showed 0 bytes
// and no setup for a session that carried 60 MB.
func TestObserverStreamsCounted(t *testing.T) {
	var cfg Config
	for _, err := range []error{cfg.AddBuiltinFlag("obfs3"), cfg.AddChainFlag("o=obfs3"), cfg.Validate()} {
		if err != nil {
			t.Fatal(err)
		}
	}
	rec := newRecorder()
	echo := func(_ context.Context, conn net.Conn, _, _ string) { defer conn.Close(); io.Copy(conn, conn) }
	s := NewServer(ServerOptions{Config: &cfg, StateDir: t.TempDir(), Streams: echo, Observer: rec})
	defer s.Close()
	pub, err := s.Start(context.Background(), []Bind{{Alias: "o", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}})
	if err != nil || pub[0].Err != nil {
		t.Fatal(err, pub)
	}
	client := NewClient(ClientOptions{Config: &cfg, StateDir: t.TempDir()})
	defer client.Close()
	conn, err := client.Dial(context.Background(), "o", pub[0].Addr.String(), pub[0].Args)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 70000)
	conn.Write(msg)
	if _, err := io.ReadFull(conn, msg); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	c := rec.ended(t)
	if c.opened != 1 || c.established != 1 || c.up != int64(len(msg)) || c.down != int64(len(msg)) || c.setupNonPositive != 0 {
		t.Errorf("observed %d opened, %d established, %d bytes up, %d down (sent %d each way), %d setups of no time",
			c.opened, c.established, c.up, c.down, len(msg), c.setupNonPositive)
	}
}
