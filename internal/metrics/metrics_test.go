package metrics

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/ptcombiner/ptcombiner/chain"
)

// feed reports a fixed history of one server chain and one child.
func feed(r *Registry) {
	r.Chains("obfs3_obfs4", "idle")
	for i := 0; i < 5; i++ {
		r.ConnOpened("obfs3_obfs4")
	}
	r.ConnFailed("obfs3_obfs4", 1, chain.ReasonDown)
	r.ConnFailed("obfs3_obfs4", 1, chain.ReasonDown)
	r.ConnFailed("obfs3_obfs4", 0, chain.ReasonTimeout)
	r.ConnFailed("obfs3_obfs4", chain.DestHop, chain.ReasonHandshake)
	r.ConnEstablished("obfs3_obfs4", 20*time.Millisecond)
	r.ConnBytes("obfs3_obfs4", 1000, 250000)
	for i := 0; i < 4; i++ {
		r.ConnClosed("obfs3_obfs4")
	}
	r.ChildEvent("obfs4proxy", "obfs4proxy#1", chain.EventStarted)
	r.ChildEvent("obfs4proxy", "obfs4proxy#1", chain.EventExited)
	r.ChildEvent("obfs4proxy", "obfs4proxy#1", chain.EventStarted)
	r.ChildEvent("obfs4proxy", "obfs4proxy#1", chain.EventRestarted)
	r.ExtORPort(chain.PeerChild, chain.ExtOK)
	r.ExtORPort(chain.PeerTor, chain.ExtFailed)
}

// The STATUS line carries the counters with the keys pt-spec allows:
// TRANSPORT first, KEY=VALUE with plain values; failures per hop, in
// order, dest after the hops; a chain with no connection has no line.
func TestStatusLines(t *testing.T) {
	r := New("server", "test")
	feed(r)
	got := r.StatusLines()
	want := []string{"STATUS TRANSPORT=obfs3_obfs4 CONNECTIONS=5 OPEN=1 FAILED=4 FAILED_HOP_0=1 FAILED_HOP_1=2 FAILED_DEST=1 BYTES_UP=1000 BYTES_DOWN=250000"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("STATUS lines:\n%q\nwant\n%q", got, want)
	}
	r.ConnOpened("c")
	r.ConnFailed("c", chain.NoHop, chain.ReasonCap)
	if l := r.StatusLines(); len(l) != 2 || !strings.HasSuffix(l[0], "FAILED=1 FAILED_NONE=1 BYTES_UP=0 BYTES_DOWN=0") {
		t.Errorf("a chain with no hop to blame: %q", l)
	}
}

// statusValue quotes what is no plain token as a CString.
func TestStatusValue(t *testing.T) {
	for in, want := range map[string]string{
		"obfs3_obfs4": "obfs3_obfs4",
		"a b":         `"a b"`,
		`q"\`:         `"q\042\134"`,
		"é":           `"\303\251"`,
		"":            `""`,
	} {
		if got := statusValue(in); got != want {
			t.Errorf("statusValue(%q) = %s, want %s", in, got, want)
		}
	}
}

// lineWriter collects what ReportStatus writes, one Write a line.
type lineWriter struct {
	mu    sync.Mutex
	lines []string
	wrote chan struct{}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.lines = append(w.lines, string(p))
	w.mu.Unlock()
	w.wrote <- struct{}{}
	return len(p), nil
}

// ReportStatus writes each chain's line at the interval, whole lines in one
// Write each, again only when it changed, and stops with its ctx.
func TestReportStatusInterval(t *testing.T) {
	r := New("client", "test")
	r.ConnOpened("t2")
	w := &lineWriter{wrote: make(chan struct{}, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	const every = 50 * time.Millisecond
	go func() { defer close(done); r.ReportStatus(ctx, w, every) }()
	<-w.wrote
	if d := time.Since(start); d < every {
		t.Errorf("first line after %v, before the interval %v", d, every)
	}
	// Unchanged: no line for several intervals; changed: the next one.
	time.Sleep(3 * every)
	r.ConnClosed("t2")
	<-w.wrote
	cancel()
	<-done
	w.mu.Lock()
	defer w.mu.Unlock()
	want := []string{"STATUS TRANSPORT=t2 CONNECTIONS=1 OPEN=1 FAILED=0 BYTES_UP=0 BYTES_DOWN=0\n",
		"STATUS TRANSPORT=t2 CONNECTIONS=1 OPEN=0 FAILED=0 BYTES_UP=0 BYTES_DOWN=0\n"}
	if strings.Join(w.lines, "") != strings.Join(want, "") {
		t.Errorf("lines %q, want %q", w.lines, want)
	}
}

// The exposition passes promlint and carries every series.
func TestExposition(t *testing.T) {
	r := New("server", "test")
	feed(r)
	s, err := Serve("127.0.0.1:0", r)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	for _, want := range []string{
		`ptcombiner_connections_opened_total{chain="obfs3_obfs4"} 5`,
		`ptcombiner_connections_opened_total{chain="idle"} 0`,
		`ptcombiner_connections_failed_total{chain="obfs3_obfs4",hop="1",reason="down"} 2`,
		`ptcombiner_connections_failed_total{chain="obfs3_obfs4",hop="dest",reason="handshake"} 1`,
		`ptcombiner_connections_open{chain="obfs3_obfs4"} 1`,
		`ptcombiner_payload_bytes_total{chain="obfs3_obfs4",direction="downstream"} 250000`,
		`ptcombiner_connection_setup_seconds_bucket{chain="obfs3_obfs4",le="0.025"} 1`,
		`ptcombiner_child_restarts_total{child="obfs4proxy#1",program="obfs4proxy"} 1`,
		`ptcombiner_child_starts_total{child="obfs4proxy#1",program="obfs4proxy"} 2`,
		`ptcombiner_extorport_handshakes_total{outcome="failed",peer="tor"} 1`,
		`ptcombiner_extorport_handshakes_total{outcome="denied",peer="child"} 0`,
		`ptcombiner_build_info{role="server",version="test"} 1`,
		"go_goroutines ", "process_open_fds ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	// A client has no Extended ORPort.
	mfs, err := New("client", "test").Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "ptcombiner_extorport") {
			t.Errorf("a client exposes %s", mf.GetName())
		}
	}
}

// ListenAddr: loopback unless an address beyond is given as an IP.
func TestListenAddr(t *testing.T) {
	for _, tc := range []struct {
		in, addr string
		public   bool
		err      string
	}{
		{"9100", "127.0.0.1:9100", false, ""},
		{":9100", "127.0.0.1:9100", false, ""},
		{"127.0.0.1:9100", "127.0.0.1:9100", false, ""},
		{"[::1]:9100", "[::1]:9100", false, ""},
		{"localhost:9100", "localhost:9100", false, ""},
		{"0.0.0.0:9100", "0.0.0.0:9100", true, ""},
		{"[::]:9100", "[::]:9100", true, ""},
		{"192.0.2.7:9100", "192.0.2.7:9100", true, ""},
		{"nonesuch.invalid:9100", "", false, "nonesuch.invalid"},
		{"99999", "", false, "want PORT"},
		{"host", "", false, "want PORT"},
		{"127.0.0.1:http", "", false, "bad port"},
	} {
		addr, public, err := ListenAddr(context.Background(), tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: err %v, want one with %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || addr != tc.addr || public != tc.public):
			t.Errorf("%q: %q public=%v err %v, want %q public=%v", tc.in, addr, public, err, tc.addr, tc.public)
		}
	}
}

// What one established connection costs the registry: open, setup, bytes,
// close, from many goroutines at once.
func BenchmarkConnection(b *testing.B) {
	r := New("server", "test")
	r.Chains("t2")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.ConnOpened("t2")
			r.ConnEstablished("t2", time.Millisecond)
			r.ConnBytes("t2", 1000, 1000)
			r.ConnClosed("t2")
		}
	})
}
