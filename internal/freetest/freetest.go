// Package freetest holds what the tests of free transports share, for
// tests only: loopback HTTP, UDP echo and DNS servers, and a SOCKS5 UDP
// client that checks datagrams come back byte-exact and in order.
package freetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/ptcombiner/ptcombiner/shim"
)

// Body is what the HTTP servers answer for size: size bytes, the same on
// every server and every call, different for every size.
func Body(size int) []byte {
	b := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(size), byte(size >> 8), byte(size >> 16)})
	r.Read(b)
	return b
}

// HTTPServers starts n loopback HTTP servers; GET /N answers Body(N), and
// each server counts the requests it served. They end with the test.
func HTTPServers(t testing.TB, n int) ([]string, *atomic.Int64) {
	t.Helper()
	var addrs []string
	count := &atomic.Int64{}
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			size, err := strconv.Atoi(r.URL.Path[1:])
			if err != nil || size < 0 || size > 64<<20 {
				http.Error(w, "want /SIZE", http.StatusBadRequest)
				return
			}
			count.Add(1)
			w.Header().Set("Content-Length", strconv.Itoa(size))
			w.Write(Body(size))
		})}
		var wg sync.WaitGroup
		wg.Go(func() { srv.Serve(ln) })
		t.Cleanup(func() { srv.Close(); wg.Wait() })
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, count
}

// Load runs f(0) to f(n-1) on workers goroutines and returns their
// errors, each naming its i.
func Load(n, workers int, f func(i int) error) []error {
	var mu sync.Mutex
	var errs []error
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%d: %w", i, err))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return errs
}

// Check says whether got is Body(size).
func Check(got []byte, size int) error {
	want := Body(size)
	if !bytes.Equal(got, want) {
		g, w := sha256.Sum256(got), sha256.Sum256(want)
		return fmt.Errorf("got %d bytes (sha256 %x), want %d (sha256 %x)", len(got), g[:6], size, w[:6])
	}
	return nil
}

// Echo writes msg on c, a connection to an echo server, and reads it
// back within timeout.
func Echo(c net.Conn, timeout time.Duration, msg string) error {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echoed %q, sent %q", got, msg)
	}
	return nil
}

// UDPEcho starts a loopback UDP server that sends every datagram back to
// its sender; it ends with the test.
func UDPEcho(t testing.TB) netip.AddrPort {
	t.Helper()
	return serveUDP(t, func(b []byte) []byte { return b })
}

// serveUDP answers each datagram with answer(datagram), when not nil.
func serveUDP(t testing.TB, answer func([]byte) []byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	pc.SetReadBuffer(4 << 20)
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if out := answer(buf[:n]); out != nil {
				pc.WriteToUDPAddrPort(out, from)
			}
		}
	})
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// DNSAnswer is the address DNSServer gives every A query.
var DNSAnswer = netip.MustParseAddr("192.0.2.53")

// DNSServer starts a loopback DNS server that answers every A query with
// DNSAnswer; it ends with the test.
func DNSServer(t testing.TB) netip.AddrPort {
	t.Helper()
	return serveUDP(t, func(q []byte) []byte {
		var p dnsmessage.Parser
		h, err := p.Start(q)
		if err != nil {
			return nil
		}
		question, err := p.Question()
		if err != nil {
			return nil
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
		b.StartQuestions()
		b.Question(question)
		b.StartAnswers()
		b.AResource(dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
			dnsmessage.AResource{A: DNSAnswer.As4()})
		out, err := b.Finish()
		if err != nil {
			return nil
		}
		return out
	})
}

// UDPClient is an application's UDP association through a SOCKS5 proxy.
type UDPClient struct {
	ctrl  net.Conn
	pc    *net.UDPConn
	relay netip.AddrPort
}

// Associate asks the SOCKS5 proxy at proxy for a UDP association; it ends
// with Close, or the test.
func Associate(ctx context.Context, t testing.TB, proxy string, user, pass []byte) (*UDPClient, error) {
	ctrl, err := net.Dial("tcp", proxy)
	if err != nil {
		return nil, err
	}
	bnd, err := shim.AssociateUDP(ctx, ctrl, user, pass)
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	relay, ok := bnd.AddrPort()
	if !ok {
		ctrl.Close()
		return nil, fmt.Errorf("the relay is %v, not an IP address", bnd)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		ctrl.Close()
		return nil, err
	}
	pc.SetReadBuffer(4 << 20)
	u := &UDPClient{ctrl: ctrl, pc: pc, relay: relay}
	t.Cleanup(u.Close)
	return u, nil
}

// Close ends the association.
func (u *UDPClient) Close() {
	u.ctrl.Close()
	u.pc.Close()
}

// Send sends one datagram to dest through the relay.
func (u *UDPClient) Send(dest shim.Addr, data []byte) error {
	b, err := shim.AppendUDPHeader(nil, dest)
	if err != nil {
		return err
	}
	_, err = u.pc.WriteToUDPAddrPort(append(b, data...), u.relay)
	return err
}

// Receive reads one datagram from the relay, within timeout, and returns
// its source and data.
func (u *UDPClient) Receive(timeout time.Duration) (shim.Addr, []byte, error) {
	buf := make([]byte, 1<<16)
	u.pc.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := u.pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return shim.Addr{}, nil, err
	}
	if from != u.relay {
		return shim.Addr{}, nil, fmt.Errorf("a datagram from %v, not the relay %v", from, u.relay)
	}
	src, data, err := shim.ParseUDPRequest(buf[:n])
	return src, data, err
}

// Datagram is the i-th datagram of an Exchange: 1 to 1400 bytes, its
// size and content fixed by i.
func Datagram(i int) []byte {
	r := rand.New(rand.NewPCG(uint64(i), 7))
	b := make([]byte, 1+r.IntN(1400))
	for j := range b {
		b[j] = byte(r.Uint32())
	}
	return b
}

// Exchange sends n datagrams (Datagram(0) to Datagram(n-1)) to the echo
// server dest, at most window of them unanswered, and checks that each
// comes back byte-exact, from dest, in the order sent. A datagram that
// does not come back within timeout fails it.
func (u *UDPClient) Exchange(dest netip.AddrPort, n, window int, timeout time.Duration) error {
	to := shim.AddrFrom(dest)
	sent := 0
	for got := 0; got < n; got++ {
		for ; sent < n && sent-got < window; sent++ {
			if err := u.Send(to, Datagram(sent)); err != nil {
				return fmt.Errorf("send datagram %d: %w", sent, err)
			}
		}
		src, data, err := u.Receive(timeout)
		if err != nil {
			return fmt.Errorf("datagram %d of %d (%d sent): %w", got, n, sent, err)
		}
		if ap, _ := src.AddrPort(); ap != dest {
			return fmt.Errorf("datagram %d came from %v, not %v", got, src, dest)
		}
		if want := Datagram(got); !bytes.Equal(data, want) {
			return fmt.Errorf("datagram %d: %d bytes (% x...) came back, not the %d sent, in order (% x...)",
				got, len(data), data[:min(8, len(data))], len(want), want[:min(8, len(want))])
		}
	}
	return nil
}

// Lookup asks the DNS server at server for name's A record through u.
func (u *UDPClient) Lookup(server shim.Addr, name string, timeout time.Duration) (netip.Addr, error) {
	id := uint16(rand.Uint32())
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, RecursionDesired: true})
	b.StartQuestions()
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return netip.Addr{}, err
	}
	b.Question(dnsmessage.Question{Name: qname, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		return netip.Addr{}, err
	}
	if err := u.Send(server, q); err != nil {
		return netip.Addr{}, err
	}
	_, data, err := u.Receive(timeout)
	if err != nil {
		return netip.Addr{}, err
	}
	var p dnsmessage.Parser
	h, err := p.Start(data)
	if err != nil {
		return netip.Addr{}, err
	}
	if h.ID != id || !h.Response {
		return netip.Addr{}, fmt.Errorf("answer of id %d (response %v), asked %d", h.ID, h.Response, id)
	}
	if err := p.SkipAllQuestions(); err != nil {
		return netip.Addr{}, err
	}
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			return netip.Addr{}, errors.New("no A record in the answer")
		}
		if err != nil {
			return netip.Addr{}, err
		}
		if rh.Type != dnsmessage.TypeA {
			p.SkipAnswer()
			continue
		}
		a, err := p.AResource()
		if err != nil {
			return netip.Addr{}, err
		}
		return netip.AddrFrom4(a.A), nil
	}
}
