package chain

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/transport"
)

// fakeInstance is one tor instance's Extended ORPort: it can be stopped
// (its listener and streams closed, as when tor exits), started again on
// the same address, and given a new cookie, as tor writes at each start.
type fakeInstance struct {
	t          *testing.T
	addr       string
	cookiePath string
	streams    atomic.Int64
	wrongMeta  atomic.Int64
	refused    atomic.Int64 // handshakes that failed (a stale cookie)

	mu     sync.Mutex
	cookie []byte
	ln     net.Listener
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func startFakeInstance(t *testing.T) *fakeInstance {
	t.Helper()
	f := &fakeInstance{t: t, addr: "127.0.0.1:0", cookiePath: filepath.Join(t.TempDir(), "extended_orport_auth_cookie")}
	f.regenerate()
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeInstance) regenerate() {
	cookie, err := extorport.WriteCookieFile(f.cookiePath)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.cookie = cookie
	f.mu.Unlock()
}

func (f *fakeInstance) start() {
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.ln, f.addr, f.conns = ln, ln.Addr().String(), map[net.Conn]bool{}
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns[c] = true
			cookie := f.cookie
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				meta, err := extorport.ServerHandshake(c, extorport.ServerConfig{Cookie: cookie})
				if err != nil {
					f.refused.Add(1)
					return
				}
				if meta.Transport != "x" || meta.UserAddr == "" {
					f.wrongMeta.Add(1)
				}
				f.streams.Add(1)
				extorport.Okay(c)
				io.Copy(c, c)
			}()
		}
	}()
}

func (f *fakeInstance) stop() {
	f.mu.Lock()
	if f.ln != nil {
		f.ln.Close()
		for c := range f.conns {
			c.Close()
		}
		f.ln = nil
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// instancesServer runs chain x (one in-process test PT hop) towards the
// instances.
func instancesServer(t *testing.T, insts ...*fakeInstance) (*testServer, string) {
	t.Helper()
	cfg, binds := hopsConfig(t, map[string]metadata.Args{"x": {"key": {"0"}}}, "--builtin", "xor", "--chain", "x=xor")
	opt := ServerOptions{InProcess: map[string]transport.ServerTransport{"xor": xorHop("xor")}}
	for _, f := range insts {
		opt.TorInstances = append(opt.TorInstances, TorInstance{ExtORPort: f.addr, CookiePath: f.cookiePath})
	}
	ts, pubs := startServerConfig(t, cfg, opt, binds)
	if pubs[0].Err != nil {
		t.Fatal(pubs[0].Err)
	}
	return ts, pubs[0].Addr.String()
}

// through sends a line through chain x at public and reads it back.
func through(public string) error {
	c, err := net.Dial("tcp", public)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(eventCeiling))
	if _, err := io.WriteString(c, "TESTPT1 xor 0\nping\n"); err != nil {
		return err
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != "ping\n" {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// 1000 client connections over two tor instances are spread within 60/40
// (fewest open first, ties in turn), each told its client and the alias.
func TestServerTorInstancesSpread(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a, b := startFakeInstance(t), startFakeInstance(t)
	ts, public := instancesServer(t, a, b)
	const total = 1000
	if failed := runLoad(total, 20, func(int) error { return through(public) }); len(failed) > 0 {
		t.Fatalf("%d connections failed, the first: %s", len(failed), failed[0])
	}
	na, nb := a.streams.Load(), b.streams.Load()
	t.Logf("instance 0: %d streams, instance 1: %d", na, nb)
	if na+nb != total || na < total*4/10 || nb < total*4/10 {
		t.Errorf("streams %d and %d, want %d within 60/40", na, nb, total)
	}
	if a.wrongMeta.Load()+b.wrongMeta.Load() > 0 {
		t.Error("an instance heard no USERADDR or another TRANSPORT than the alias")
	}
	if err := waitOpen(ts.srv, 0, 0); err != nil {
		t.Error(err)
	}
}

// waitOpen waits until the pool counts these open streams per instance.
func waitOpen(s *Server, want ...int) error {
	deadline := time.Now().Add(eventCeiling)
	for {
		got := s.tor.Open()
		same := len(got) == len(want)
		for i := range got {
			same = same && got[i] == want[i]
		}
		if same {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("open streams per instance %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An instance that stops is detected at the first stream that meets it,
// and that stream goes to the other instance at once: no client's setup
// fails, then or after, and the stopped instance is tried again only after
// a backoff. When it is back, with the new cookie tor wrote at its start,
// streams reach it again; a cookie file rewritten with its old time is
// read again when tor refuses the cookie.
func TestServerTorInstancesFailover(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	a, b := startFakeInstance(t), startFakeInstance(t)
	ts, public := instancesServer(t, a, b)
	load := func(n int) {
		t.Helper()
		if failed := runLoad(n, 4, func(int) error { return through(public) }); len(failed) > 0 {
			t.Fatalf("%d client connections failed, the first: %s", len(failed), failed[0])
		}
	}
	load(40)
	if a.streams.Load() == 0 || b.streams.Load() == 0 {
		t.Fatalf("streams %d and %d before the stop", a.streams.Load(), b.streams.Load())
	}

	a.stop()
	before := a.streams.Load()
	load(300)
	if a.streams.Load() != before {
		t.Errorf("the stopped instance got %d streams", a.streams.Load()-before)
	}
	if n := strings.Count(ts.logs.String(), `level=WARN msg="a tor instance failed`); n != 1 {
		t.Errorf("%d warnings that instance 0 failed, want 1 (later ones at debug)", n)
	}

	// Tor starts again, with a new cookie.
	a.regenerate()
	a.start()
	waitStreams(t, a, before, public)
	if err := waitLog(ts.logs, eventCeiling, "level=INFO", "a tor instance is back", "instance=0"); err != nil {
		t.Error(err)
	}

	// A new cookie in a file whose time and size did not change: tor
	// refuses the cookie read before, the file is read again.
	st, err := os.Stat(a.cookiePath)
	if err != nil {
		t.Fatal(err)
	}
	a.regenerate()
	if err := os.Chtimes(a.cookiePath, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	warned := strings.Count(ts.logs.String(), "a tor instance failed")
	refused := a.refused.Load()
	waitStreams(t, a, a.streams.Load(), public)
	if a.refused.Load() == refused {
		t.Error("the stale cookie was never tried: the file was read again although its time and size had not changed")
	}
	if n := strings.Count(ts.logs.String(), "a tor instance failed"); n != warned {
		t.Errorf("a regenerated cookie counted as a failure of the instance")
	}
}

// waitStreams sends connections until a has more than from streams; none
// may fail.
func waitStreams(t *testing.T, a *fakeInstance, from int64, public string) {
	t.Helper()
	deadline := time.Now().Add(eventCeiling)
	for a.streams.Load() <= from {
		if err := through(public); err != nil {
			t.Fatalf("a client connection failed: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no stream reached the instance again")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
