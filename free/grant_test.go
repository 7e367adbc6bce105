package free

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xtaci/smux"

	"github.com/ptcombiner/ptcombiner/shim"
)

// fakeBridge is a bridge written by hand on the smux session: it answers
// Advertise with advert (nil: 01 07, as an older bridge does), refuses
// Window (01 07, as an older bridge does), and hands
// every other stream, header read, to the test on streams, without a
// reply: the test replies when it pleases.
type fakeBridge struct {
	proxy   string
	log     *logBuffer
	streams chan fakeStream
}

type fakeStream struct {
	h  Header
	st *smux.Stream
}

func newFakeBridge(t *testing.T, advert *Policy, wait bool) *fakeBridge {
	t.Helper()
	b := &fakeBridge{log: &logBuffer{}, streams: make(chan fakeStream, 16)}
	log := slog.New(slog.NewTextHandler(b.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	bridge := listen(t)
	wg.Go(func() {
		c, err := bridge.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		mux, err := smux.Server(c, muxConfig(0))
		if err != nil {
			return
		}
		defer mux.Close()
		context.AfterFunc(ctx, func() { mux.Close() })
		for {
			st, err := mux.AcceptStream()
			if err != nil {
				return
			}
			h, err := ReadHeader(st)
			switch {
			case err != nil:
				st.Close()
			case h.Command == Window: // as an older bridge
				writeReply(st, shim.RepCommandNotSupported)
				st.Close()
			case h.Command == Advertise && advert == nil:
				writeReply(st, shim.RepCommandNotSupported)
				st.Close()
			case h.Command == Advertise:
				out, err := AppendAdvert([]byte{version, 0}, advert)
				if err != nil {
					t.Error(err)
				}
				st.Write(out)
				st.Close()
			default:
				b.streams <- fakeStream{h, st}
			}
		}
	})
	k := &Keeper{Label: "fake", Logger: log, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", bridge.Addr().String())
	}}
	p := &Proxy{Keeper: k, Logger: log, Wait: wait}
	front := listen(t)
	b.proxy = front.Addr().String()
	wg.Go(func() {
		for {
			c, err := front.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); p.Handle(ctx, c) })
		}
	})
	t.Cleanup(func() {
		front.Close()
		bridge.Close()
		k.Close()
		cancel()
		wg.Wait()
		if t.Failed() {
			t.Logf("log:\n%s", b.log)
		}
	})
	return b
}

// next is the next stream the bridge got.
func (b *fakeBridge) next(t *testing.T) fakeStream {
	t.Helper()
	select {
	case s := <-b.streams:
		return s
	case <-time.After(ceiling):
		t.Fatal("the bridge got no stream")
		return fakeStream{}
	}
}

// dialAsync runs the SOCKS5 CONNECT in the background.
func dialAsync(proxy, dest string) <-chan dialResult {
	ch := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ceiling)
		defer cancel()
		c, err := shim.DialSOCKS5(ctx, proxy, dest, nil, nil)
		ch <- dialResult{c, err}
	}()
	return ch
}

type dialResult struct {
	conn net.Conn
	err  error
}

// An allowed destination is granted before the bridge replies: the SOCKS
// reply comes, and the application's first bytes reach the bridge right
// behind the header, while the bridge has not answered yet; then the
// bridge's 01 00 and its bytes come through as the stream's.
func TestGrantBeforeTheBridge(t *testing.T) {
	b := newFakeBridge(t, loopbackPolicy(t), false)
	ch := dialAsync(b.proxy, "127.0.0.1:7")
	s := b.next(t)
	if s.h.Command != Connect || s.h.Dest.String() != "127.0.0.1:7" {
		t.Fatalf("the bridge got %v", s.h)
	}
	var r dialResult
	select {
	case r = <-ch:
	case <-time.After(ceiling):
		t.Fatal("no SOCKS reply while the bridge has not answered")
	}
	if r.err != nil {
		t.Fatalf("CONNECT: %v", r.err)
	}
	defer r.conn.Close()
	if _, err := r.conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(s.st, got); err != nil || string(got) != "hello" {
		t.Fatalf("the bridge read %q, %v before replying; want the application's hello", got, err)
	}
	s.st.Write([]byte{version, shim.RepSucceeded, 'o', 'k'})
	if _, err := io.ReadFull(r.conn, got[:2]); err != nil || string(got[:2]) != "ok" {
		t.Fatalf("the application read %q, %v; want ok", got[:2], err)
	}
}

// A bridge's refusal after the grant resets the application's connection
// (it was told the CONNECT succeeded), with a log line on the client.
func TestGrantThenRefused(t *testing.T) {
	b := newFakeBridge(t, loopbackPolicy(t), false)
	ch := dialAsync(b.proxy, "127.0.0.1:1")
	s := b.next(t)
	r := <-ch
	if r.err != nil {
		t.Fatalf("CONNECT: %v", r.err)
	}
	defer r.conn.Close()
	s.st.Write([]byte{version, shim.RepConnectionRefused})
	s.st.Close()
	r.conn.SetReadDeadline(time.Now().Add(ceiling))
	_, err := r.conn.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the application's read: %v, want a reset", err)
	}
	if !strings.Contains(b.log.String(), "CONNECT refused by the bridge after it was granted") {
		t.Errorf("no log line for the refusal after the grant:\n%s", b.log)
	}
}

// With Proxy.Wait (--proxy-wait) the SOCKS reply waits for the bridge's,
// and is its code.
func TestGrantWait(t *testing.T) {
	b := newFakeBridge(t, loopbackPolicy(t), true)
	ch := dialAsync(b.proxy, "127.0.0.1:1")
	s := b.next(t)
	select {
	case r := <-ch:
		t.Fatalf("a SOCKS reply (%v) before the bridge's", r.err)
	case <-time.After(50 * time.Millisecond): // no timing requirement: only a chance to fail
	}
	s.st.Write([]byte{version, shim.RepConnectionRefused})
	s.st.Close()
	r := <-ch
	var re *shim.ReplyError
	if !errors.As(r.err, &re) || re.Code != shim.RepConnectionRefused {
		t.Fatalf("CONNECT: %v, want SOCKS reply 0x05", r.err)
	}
}

// A bridge that does not advertise its policy (an older one, which
// refuses the command with 01 07) gets no optimistic grant: the SOCKS
// reply waits for the bridge's.
func TestGrantOlderBridge(t *testing.T) {
	b := newFakeBridge(t, nil, false)
	ch := dialAsync(b.proxy, "127.0.0.1:1")
	s := b.next(t)
	select {
	case r := <-ch:
		t.Fatalf("a SOCKS reply (%v) before the bridge's", r.err)
	case <-time.After(50 * time.Millisecond):
	}
	s.st.Write([]byte{version, shim.RepHostUnreachable})
	s.st.Close()
	r := <-ch
	var re *shim.ReplyError
	if !errors.As(r.err, &re) || re.Code != shim.RepHostUnreachable {
		t.Fatalf("CONNECT: %v, want SOCKS reply 0x04", r.err)
	}
	if !strings.Contains(b.log.String(), "the bridge does not advertise its policy") {
		t.Errorf("no log line for the bridge without an advertisement:\n%s", b.log)
	}
}

// A destination the advertised policy denies is refused on the client,
// 0x02 with a log line, and never reaches the bridge; a name still goes
// to the bridge, which resolves and judges it.
func TestGrantDeniedHere(t *testing.T) {
	b := newFakeBridge(t, &Policy{}, false) // the built-in denials only
	r := <-dialAsync(b.proxy, "127.0.0.1:7")
	var re *shim.ReplyError
	if !errors.As(r.err, &re) || re.Code != shim.RepNotAllowed {
		t.Fatalf("CONNECT 127.0.0.1:7: %v, want SOCKS reply 0x02", r.err)
	}
	if l := b.log.String(); !strings.Contains(l, "destination refused by policy") || !strings.Contains(l, "the bridge's default deny 127.0.0.0/8") {
		t.Errorf("no log line naming the rule:\n%s", l)
	}
	ch := dialAsync(b.proxy, "localhost:7")
	s := b.next(t)
	if s.h.Dest.Name != "localhost" {
		t.Fatalf("the bridge got %v, want the name (the first CONNECT must not have reached it)", s.h)
	}
	s.st.Write([]byte{version, shim.RepNotAllowed})
	s.st.Close()
	r = <-ch
	if !errors.As(r.err, &re) || re.Code != shim.RepNotAllowed {
		t.Fatalf("CONNECT localhost:7: %v, want the bridge's SOCKS reply 0x02", r.err)
	}
}

// The advertisement of a policy reads back as the same verdicts, the
// built-in rules included.
func TestAdvertWire(t *testing.T) {
	p, err := ParseRules([]string{"127.0.0.0/8", "[2001:db8::/32]:443", ":8000-8100,22"}, []string{"127.0.0.1:5000-5010", "192.0.2.7"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := AppendAdvert(nil, p)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(append(b, 0xee))
	q, err := ReadAdvert(r)
	if err != nil {
		t.Fatal(err)
	}
	if r.Len() != 1 {
		t.Errorf("ReadAdvert left %d bytes, want 1 (it read past the advertisement)", r.Len())
	}
	if len(q.Rules) != len(p.Rules)+len(builtinDeny) {
		t.Errorf("%d rules advertised, want %d", len(q.Rules), len(p.Rules)+len(builtinDeny))
	}
	for _, dest := range []string{"127.0.0.1:80", "127.0.0.1:5005", "10.0.0.1:22", "10.0.0.1:8050", "192.0.2.7:1",
		"192.0.2.8:1", "[2001:db8::1]:443", "[2001:db8::1]:80", "[::1]:8050", "[fe80::1]:22", "8.8.8.8:53", "0.0.0.0:22"} {
		a := mustAddr(t, dest)
		want, got := p.Check(a.IP, a.Port), q.Check(a.IP, a.Port)
		if want.Allowed != got.Allowed {
			t.Errorf("%s: advertised policy says allowed %v (%s), the bridge's %v (%s)", dest, got.Allowed, got.Rule, want.Allowed, want.Rule)
		}
	}
	if d := q.Check(mustAddr(t, "127.0.0.1:5005").IP, 5005); d.Rule != "the bridge's --deny 127.0.0.1/32:5000-5010" {
		t.Errorf("rule named %q", d.Rule)
	}
	// The first bytes: VER, 5+1 rules of the operator's (:PORTS is two)
	// and the built-in ones.
	if n := 6 + len(builtinDeny); !bytes.HasPrefix(b, []byte{1, byte(n >> 8), byte(n)}) {
		t.Errorf("advertisement starts % x", b[:3])
	}
}

// The example of docs/free.md.
func TestAdvertExample(t *testing.T) {
	b, err := AppendAdvert(nil, loopbackPolicy(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{1, 0, 15, 0, 1, 127, 0, 0, 0, 8, 0, 0, 3, 1, 0, 0, 0, 0, 8, 0, 0}
	if !bytes.HasPrefix(b, want) {
		t.Errorf("advertisement % x, want it to start % x", b[:len(want)], want)
	}
}

// FuzzReadAdvert: an advertisement ReadAdvert accepts encodes back to
// exactly the bytes it read; it never panics, never reads past it.
func FuzzReadAdvert(f *testing.F) {
	def, _ := AppendAdvert(nil, nil)
	p, _ := ParseRules([]string{"127.0.0.0/8", "[2001:db8::/32]:443,8000-8100"}, []string{"127.0.0.1:22"})
	ops, _ := AppendAdvert(nil, p)
	for _, seed := range [][]byte{
		def,
		ops,
		{1, 0, 0},
		{1, 0, 1, 1, 1, 127, 0, 0, 0, 8, 0, 0},
		{1, 0, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 1, 1, 0xbb, 1, 0xbb},
		{1, 0, 1, 1, 1, 127, 0, 0, 1, 8, 0, 0},           // bits past the length
		{1, 0, 1, 1, 1, 127, 0, 0, 0, 33, 0, 0},          // /33
		{1, 0, 1, 4, 1, 127, 0, 0, 0, 8, 0, 0},           // unknown flag
		{1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 9, 0, 8}, // a range backwards
		{1, 0xff, 0xff},
		{2, 0, 0},
		{1, 0, 1, 0, 3},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		p, err := ReadAdvert(r)
		if err != nil {
			return
		}
		read := in[:len(in)-r.Len()]
		back, err := AppendAdvert(nil, p)
		if err != nil || !bytes.Equal(back, read) {
			t.Fatalf("ReadAdvert read % x, which encodes back as % x, %v", read, back, err)
		}
	})
}
