package chain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// xorServer is a Server with in-process xor hops (xorHop) beside the
// builtins and the test PT, towards tor, for the engine's own tests; flags
// as for hopsConfig.
func xorServer(t *testing.T, opt ServerOptions, opts map[string]metadata.Args, flags ...string) *testServer {
	t.Helper()
	cfg, binds := hopsConfig(t, opts, append([]string{"--builtin", "xor"}, flags...)...)
	if opt.InProcess == nil {
		opt.InProcess = map[string]transport.ServerTransport{"xor": xorHop("xor")}
	}
	ts, pubs := startServerConfig(t, cfg, opt, binds)
	for _, p := range pubs {
		if p.Err != nil {
			t.Fatalf("%s: %v", p.Alias, p.Err)
		}
	}
	return ts
}

// countedHop counts the handshakes its servers have begun.
type countedHop struct {
	transport.ServerTransport
	begun *atomic.Int64
}

func (h countedHop) Start(ctx context.Context, cfg transport.ServerConfig) (transport.Server, error) {
	srv, err := h.ServerTransport.Start(ctx, cfg)
	return countedServer{Server: srv, begun: h.begun}, err
}

type countedServer struct {
	transport.Server
	begun *atomic.Int64
}

func (s countedServer) WrapConn(ctx context.Context, c net.Conn) (transport.Conn, error) {
	s.begun.Add(1)
	return s.Server.WrapConn(ctx, c)
}

// awaitEOF reads c until the server closes it, within a generous ceiling.
func awaitEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.Copy(io.Discard, c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the server left the connection open for 60 s")
	}
}

// Thousands of connections through chains with in-process hops (alone,
// outside a child, inside a child), one in ten failing an in-process
// handshake on purpose, leave no goroutine, socket or stamp behind; the
// failed ones are closed by the server (inside a child too: the client's
// connection used to wait for its own deadline, the test PT child only
// half-closing it after the in-process hop's reset); Close
// then ends connections still in an in-process handshake and leaves
// nothing running.
func TestServerInProcessNoLeaks(t *testing.T) {
	total := 3000
	if testing.Short() {
		total = 600
	}
	tor := startIDTor(t)
	present := goleak.IgnoreCurrent()
	var begun atomic.Int64
	ts := xorServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath,
		InProcess: map[string]transport.ServerTransport{"xor": countedHop{xorHop("xor"), &begun}}},
		map[string]metadata.Args{"xo": {"0.key": {"21"}}, "xt": {"0.key": {"22"}, "1.key": {"23"}}, "tx": {"0.key": {"24"}, "1.key": {"25"}}},
		"--builtin", "obfs2", "--plugin", "test="+testpt,
		"--chain", "xo=xor|obfs2", "--chain", "xt=test|xor", "--chain", "tx=xor|test")
	chains := []struct {
		alias, wrongKey string // the in-process xor hop's key, wrong
		client          transport.Dialer
	}{
		{"xo", "0.key", clientFor(t, "xor", "obfs2")},
		{"xt", "1.key", clientFor(t, "test", "xor")},
		{"tx", "0.key", clientFor(t, "xor", "test")},
	}
	var failedOnPurpose atomic.Int64
	one := func(i int) error {
		ch := chains[i%len(chains)]
		pub := ts.pubs[ch.alias]
		args := pub.Args
		fail := i%10 == 0
		if fail {
			args = metadata.Args{}
			for k, v := range pub.Args {
				args[k] = v
			}
			args[ch.wrongKey] = []string{"99"} // as many digits: the server reads the header it expects
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		conn, local, err := dialChain(ctx, ch.client, pub, args)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		err = echoThrough(conn, "ID "+local+"\n", 100+i%1000)
		if fail {
			switch {
			case err == nil:
				return errors.New("a connection with a wrong key went through")
			case errors.Is(err, os.ErrDeadlineExceeded):
				return fmt.Errorf("a connection with a wrong key was left open: %w", err)
			}
			failedOnPurpose.Add(1)
			return nil
		}
		return err
	}
	runLoad(30, 10, one) // warm up: pools, buffers, goroutine stacks
	base, _ := settle(func(usage) bool { return true })
	start := time.Now()
	failures := runLoad(total, 20, one)
	elapsed := time.Since(start)
	backToBase := func(u usage) bool { return u.goroutines <= base.goroutines && u.sockets <= base.sockets }
	after, ok := settle(backToBase)
	t.Logf("%d connections in %v, %d failed on purpose; before: %+v; after: %+v; %s", total, elapsed.Round(time.Millisecond), failedOnPurpose.Load(), base, after, tor.summary())
	if len(failures) > 0 {
		t.Errorf("%d of %d connections failed; first: %q", len(failures), total, failures[:min(5, len(failures))])
	}
	if !ok {
		t.Errorf("goroutines or sockets left: %+v after, %+v before", after, base)
	}
	if n := ts.srv.PendingStamps(); n != 0 {
		t.Errorf("%d stamps left", n)
	}

	// Connections that never finish an in-process handshake: on the wire
	// (xt's outermost hop), and after a child's arrival (tx's innermost).
	var idle []net.Conn
	before := begun.Load()
	for range 10 {
		c, err := net.Dial("tcp", ts.pubs["xt"].Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
		c, err = net.Dial("tcp", ts.pubs["tx"].Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("TESTPT1 test 25\n")) // the child reports it; the xor header never comes
		idle = append(idle, c)
	}
	waitFor(t, "the idle connections' in-process handshakes", eventCeiling, func() bool { return begun.Load() == before+20 })
	if err := ts.srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	for _, c := range idle {
		awaitEOF(t, c)
		c.Close()
	}
	if err := goleak.Find(present); err != nil {
		t.Errorf("after Close: %v", err)
	}
}

// The first SIGINT's drain holds for a connection through in-process hops:
// the public listener closes, the open connection goes on, and Drained
// fires once it ends.
func TestServerInProcessDrain(t *testing.T) {
	tor := startIDTor(t)
	ts := xorServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath},
		map[string]metadata.Args{"xo": {"0.key": {"21"}}}, "--builtin", "obfs2", "--chain", "xo=xor|obfs2")
	pub := ts.pubs["xo"]
	conn, local, err := dialChain(context.Background(), clientFor(t, "xor", "obfs2"), pub, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if err := echoThrough(conn, "ID "+local+"\n", 100); err != nil {
		t.Fatal(err)
	}
	ts.srv.CloseListeners([]*net.TCPAddr{pub.Addr})
	drained := ts.srv.Drained()
	if c, err := net.Dial("tcp", pub.Addr.String()); err == nil {
		c.Close()
		t.Error("the public listener still accepts after CloseListeners")
	}
	if err := echoThrough(conn, "", 1000); err != nil {
		t.Fatalf("the open connection after CloseListeners: %v", err)
	}
	select {
	case <-drained:
		t.Fatal("drained while a connection is open")
	default:
	}
	conn.Close()
	select {
	case <-drained:
	case <-time.After(eventCeiling):
		t.Fatal("not drained after the last connection closed")
	}
}

// A frozen child inside an in-process hop: ArrivalTimeout still closes the
// client's connection and names the hop, the in-process hop's connection
// being what the engine dialled the child with.
func TestServerInProcessArrivalTimeout(t *testing.T) {
	tor := startIDTor(t)
	ts := xorServer(t, ServerOptions{TorExtORPort: tor.addr, TorCookiePath: tor.cookiePath, ArrivalTimeout: time.Second},
		map[string]metadata.Args{"xt": {"0.key": {"26"}, "1.key": {"27"}}}, "--plugin", "test="+testpt, "--chain", "xt=test|xor")
	pid := childWithKey(t, ts.srv, 26)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { syscall.Kill(pid, syscall.SIGCONT) }
	t.Cleanup(cont)
	defer cont()
	conn, local, err := dialChain(context.Background(), clientFor(t, "test", "xor"), ts.pubs["xt"], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("ID " + local + "\nhello"))
	awaitEOF(t, conn)
	if err := waitLog(ts.logs, 10*time.Second, "never reported", "chain=xt", "hop=0", "pid="+strconv.Itoa(pid), "waited=1s"); err != nil {
		t.Error(err)
	}
}
