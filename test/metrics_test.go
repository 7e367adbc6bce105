package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// scrape is one exposition of a --metrics endpoint, linted and parsed.
type scrape struct {
	text string
	mfs  map[string]*dto.MetricFamily
}

// scrapeMetrics fetches http://addr/metrics, checks it with the
// Prometheus linter and parses it.
func scrapeMetrics(t testing.TB, addr string) scrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s, %v", resp.Status, err)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	return scrape{text: string(body), mfs: mfs}
}

// value sums the series of name whose labels include every k=v of labels
// (a counter's or gauge's value; a histogram's count).
func (s scrape) value(name string, labels ...string) float64 {
	mf := s.mfs[name]
	if mf == nil {
		return 0
	}
	sum := 0.0
	for _, m := range mf.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			match = match && have[labels[i]] == labels[i+1]
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// failures returns the failed connections of chain by "hop/reason".
func (s scrape) failures(chain string) map[string]int {
	out := map[string]int{}
	if mf := s.mfs["ptcombiner_connections_failed_total"]; mf != nil {
		for _, m := range mf.Metric {
			l := map[string]string{}
			for _, lp := range m.Label {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["chain"] == chain && m.Counter.GetValue() > 0 {
				out[l["hop"]+"/"+l["reason"]] += int(m.Counter.GetValue())
			}
		}
	}
	return out
}

// childByEnv returns the child of pid whose environment holds kv.
func childByEnv(t *testing.T, pid int, kv string) int {
	t.Helper()
	for _, k := range childPids(pid) {
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", k))
		for _, e := range strings.Split(string(env), "\x00") {
			if e == kv {
				return k
			}
		}
	}
	t.Fatalf("no child of %d has %s in its environment (children %v)", pid, kv, childPids(pid))
	return 0
}

// metricsLoad is a load of total connections at workers at once, during
// which kill is called once, after killAfter connections ended.
type metricsLoad struct {
	total, workers, killAfter int
	one                       func(i int) outcome
	kill                      func()
}

// outcome is what the test saw of one connection: refused at setup,
// broken after it, or carried byte-exact (bytes: its payload each way).
type outcome struct {
	refused, broken bool
	bytes           int64
}

type loadResult struct {
	refused, broken, ok atomic.Int64
	okBytes, maxBroken  atomic.Int64 // payload of ok connections; at most that of broken ones
}

func (l metricsLoad) run() *loadResult {
	res := &loadResult{}
	var ended atomic.Int64
	var killOnce sync.Once
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < l.workers; w++ {
		wg.Go(func() {
			for i := range jobs {
				o := l.one(i)
				switch {
				case o.refused:
					res.refused.Add(1)
				case o.broken:
					res.broken.Add(1)
					res.maxBroken.Add(o.bytes)
				default:
					res.ok.Add(1)
					res.okBytes.Add(o.bytes)
				}
				if ended.Add(1) == int64(l.killAfter) {
					killOnce.Do(l.kill)
				}
			}
		})
	}
	for i := 0; i < l.total; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return res
}

// waitOpenZero waits until the endpoint shows no connection of chain open,
// and returns that scrape.
func waitOpenZero(t *testing.T, addr, chain string) scrape {
	t.Helper()
	var last scrape
	waitFor(t, "no connection of "+chain+" open", eventCeiling, func() bool {
		last = scrapeMetrics(t, addr)
		return last.value("ptcombiner_connections_open", "chain", chain) == 0
	})
	return last
}

// checkStatusLine waits for tor's STATUS line of chain with these counts.
func checkStatusLine(t *testing.T, status *statusSink, chain string, parts ...string) {
	t.Helper()
	line, err := status.waitFor(eventCeiling, append([]string{"TRANSPORT=" + chain + " CONNECTIONS="}, parts...)...)
	if err != nil {
		t.Error(err)
		return
	}
	t.Logf("STATUS %s", line)
}

// Acceptance (issue 15, metrics, client side): ptcombiner-client run by a
// tor-like parent with --metrics serves a 2-hop chain testa|testb, each hop
// its own child (two names of the test PT); 1000 connections at 50 at once,
// and the child of hop 1 (testb: the outer hop, the one on the wire; hops
// are numbered as in N.key, 0 innermost) is killed partway. The counters
// match what the test saw: every connection opened, the refused ones failed
// at hop 1 for a killed child's reasons, the bytes of those carried, none
// open at the end, hop 1's child restarted once; the exposition passes
// promlint during the load and after; the counters reach tor as STATUS.
func TestMetricsClientLoad(t *testing.T) {
	const total, workers, size = 1000, 50, 20000
	echo := echoServer(t)
	outer := filepath.Join(t.TempDir(), "testpt-outer") // a second program: a child of its own
	if err := os.Symlink(bin("testpt"), outer); err != nil {
		t.Fatal(err)
	}
	hops := []serverHop{{path: bin("testpt"), method: "testa", options: metadata.Args{"key": {"11"}}},
		{path: bin("testpt"), method: "testb", options: metadata.Args{"key": {"22"}}}}
	bridge, args := serverChain(t, echo, hops)
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logs, status := &logSink{}, &statusSink{}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-client", Path: bin("ptcombiner-client"), Role: ptproc.Client, Methods: []string{"t2"},
		Args: []string{"--plugin", "testa=" + bin("testpt"), "--plugin", "testb=" + outer, "--chain", "t2=testa|testb",
			"--metrics", maddr, "--status-interval", "100ms"},
		StateDir: t.TempDir(), Logger: testLogger(t), OnLog: logs.add, OnStatus: status.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := &combiner{proc: p, methods: p.Methods(), errs: p.MethodErrors(), logs: logs}
	if err := dialOnce(t, c, "t2", bridge, args); err != nil { // both children started
		t.Fatal(err)
	}
	before := waitOpenZero(t, maddr, "t2") // that connection's bytes are in
	hop1 := childByEnv(t, p.Pid(), "TOR_PT_CLIENT_TRANSPORTS=testb")

	var during scrape
	load := metricsLoad{total: total, workers: workers, killAfter: total / 3,
		kill: func() {
			syscall.Kill(hop1, syscall.SIGKILL)
			if _, err := logs.waitFor(eventCeiling, "chained connection failed", "hop 1"); err != nil {
				t.Error(err)
			}
			during = scrapeMetrics(t, maddr)
		},
		one: func(i int) outcome {
			ctx, cancel := context.WithTimeout(context.Background(), eventCeiling)
			defer cancel()
			conn, err := c.dial(ctx, "t2", bridge, args)
			if err != nil {
				return outcome{refused: true}
			}
			conn.SetDeadline(time.Now().Add(eventCeiling))
			if err := roundTrip(t, conn, size); err != nil {
				return outcome{broken: true, bytes: size}
			}
			return outcome{bytes: size}
		}}
	res := load.run()
	after := waitOpenZero(t, maddr, "t2")
	t.Logf("the test saw %d connections carried, %d refused at setup, %d broken after it", res.ok.Load(), res.refused.Load(), res.broken.Load())

	// During: the kill shows, and the counts only grow.
	if during.mfs == nil {
		t.Fatal("no scrape during the load")
	}
	if n := during.failures("t2"); n["1/down"]+n["1/refused"]+n["1/closed"] == 0 {
		t.Errorf("during the load, after the kill: no failure at hop 1: %v", n)
	}
	if o := during.value("ptcombiner_connections_opened_total", "chain", "t2"); o <= 1 || o > total+1 {
		t.Errorf("during the load: %v opened", o)
	}

	opened := after.value("ptcombiner_connections_opened_total", "chain", "t2") - before.value("ptcombiner_connections_opened_total", "chain", "t2")
	if opened != total {
		t.Errorf("opened: %v, the test opened %d", opened, total)
	}
	fails, sum := hop1Failures(t, after)
	if int64(sum) != res.refused.Load() || fails["1/down"]+fails["1/refused"] == 0 {
		t.Errorf("failures %v (%d), the test saw %d connections refused; want them at hop 1", fails, sum, res.refused.Load())
	}
	t.Logf("failures by hop/reason: %v", fails)
	established := after.value("ptcombiner_connection_setup_seconds", "chain", "t2") - before.value("ptcombiner_connection_setup_seconds", "chain", "t2")
	if established != float64(total-res.refused.Load()) {
		t.Errorf("setups observed: %v, want %d", established, total-res.refused.Load())
	}
	checkPayload(t, before, after, res)
	checkRestartedOnce(t, after, "testpt-outer#1", "testpt#0")
	checkStatusLine(t, status, "t2", fmt.Sprintf("CONNECTIONS=%d OPEN=0 FAILED=%d", total+1, sum), "FAILED_HOP_1=")
}

// Acceptance (issue 15, metrics, server side): ptcombiner-server with
// --metrics serves test|test (two children, one per key) to a fake tor;
// the test speaks both hops' client side itself over 1000 connections, 50
// at once, and kills the child of hop 1 (the outer one, which every public
// connection is dialled into) partway. Every connection is opened, and
// each either fails (some at hop 1) or reaches tor, as many as the fake
// tor counted; the Extended ORPort exchanges add up; bytes, open-now and
// the restart as on the client.
func TestMetricsServerLoad(t *testing.T) {
	const total, workers = 1000, 50
	ft := startFakeTor(t, "t2")
	keys := []byte{11, 22}
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	logs, status := &logSink{}, &statusSink{}
	p, err := ptproc.Start(context.Background(), ptproc.Spec{
		Name: "ptcombiner-server", Path: bin("ptcombiner-server"), Role: ptproc.Server, Methods: []string{"t2"},
		Args:      []string{"--plugin", "test=" + bin("testpt"), "--chain", "t2=test|test", "--metrics", maddr, "--status-interval", "100ms"},
		Options:   map[string]metadata.Args{"t2": {"0.key": {"11"}, "1.key": {"22"}}},
		ExtORPort: ft.addr, AuthCookieFile: ft.cookiePath, ORPort: "127.0.0.1:1",
		StateDir: t.TempDir(), Logger: testLogger(t), OnLog: logs.add, OnStatus: status.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	public := p.ServerMethods()["t2"].Addr.String()
	hop1 := childByEnv(t, p.Pid(), "TOR_PT_SERVER_TRANSPORT_OPTIONS=test:key=22")

	var during scrape
	load := metricsLoad{total: total, workers: workers, killAfter: total / 3,
		kill: func() {
			syscall.Kill(hop1, syscall.SIGKILL)
			if _, err := logs.waitFor(eventCeiling, "PT program restarted"); err != nil {
				t.Error(err)
			}
			during = scrapeMetrics(t, maddr)
		},
		one: func(i int) outcome {
			raw, err := net.DialTimeout("tcp", public, eventCeiling)
			if err != nil {
				return outcome{refused: true}
			}
			conn := raw.(*net.TCPConn)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(eventCeiling))
			msg := make([]byte, 100+i%2000)
			rand.Read(msg)
			payload := append([]byte("ID "+conn.LocalAddr().String()+"\n"), msg...)
			err = oneStream(conn, keys, payload)
			return outcome{broken: err != nil, bytes: int64(len(payload))}
		}}
	res := load.run()
	after := waitOpenZero(t, maddr, "t2")
	t.Logf("the test saw %d connections carried, %d broken; the fake tor saw %d streams", res.ok.Load(), res.broken.Load(), ft.streams.Load())
	if during.mfs == nil {
		t.Fatal("no scrape during the load")
	}
	if s := during.value("ptcombiner_child_restarts_total", "child", "testpt#1"); s != 1 {
		t.Errorf("during the load, after the restart: %v restarts of hop 1's child", s)
	}

	if opened := after.value("ptcombiner_connections_opened_total", "chain", "t2"); opened != total {
		t.Errorf("opened: %v, the test opened %d", opened, total)
	}
	fails, sum := hop1Failures(t, after)
	established := int(after.value("ptcombiner_connection_setup_seconds", "chain", "t2"))
	if established+sum != total || established < int(res.ok.Load()) || established > int(ft.streams.Load()) {
		t.Errorf("%d established and %d failed (%v) of %d; the test carried %d, the fake tor saw %d", established, sum, fails, total, res.ok.Load(), ft.streams.Load())
	}
	if fails["1/down"]+fails["1/refused"]+fails["1/closed"] == 0 {
		t.Errorf("no failure at hop 1: %v", fails)
	}
	t.Logf("failures by hop/reason: %v", fails)
	// A stream may reach tor after its client's connection broke (and was
	// counted failed): between the established ones and the fake tor's.
	if got := int(after.value("ptcombiner_extorport_handshakes_total", "peer", "tor", "outcome", "ok")); got < established || got > int(ft.streams.Load()) {
		t.Errorf("%v Extended ORPort exchanges with tor ok, %d established, %d seen by the fake tor", got, established, ft.streams.Load())
	}
	if got := after.value("ptcombiner_extorport_handshakes_total", "peer", "child", "outcome", "ok"); int(got) < 2*established {
		t.Errorf("%v Extended ORPort exchanges with the children ok, fewer than two per established connection (%d)", got, established)
	}
	for _, o := range []string{"unmatched", "denied"} {
		if got := after.value("ptcombiner_extorport_handshakes_total", "peer", "child", "outcome", o); got != 0 {
			t.Errorf("%v Extended ORPort exchanges with the children %s", got, o)
		}
	}
	checkPayload(t, scrape{}, after, res)
	checkRestartedOnce(t, after, "testpt#1", "testpt#0")
	checkStatusLine(t, status, "t2", fmt.Sprintf("CONNECTIONS=%d OPEN=0 FAILED=%d", total, sum), "FAILED_HOP_1=")
}

// hop1Failures returns chain t2's failures by "hop/reason" and their sum,
// and checks that each is one a killed child of hop 1 causes: at hop 1,
// for its program being down, refusing, or closing connections in setup.
func hop1Failures(t *testing.T, s scrape) (map[string]int, int) {
	t.Helper()
	fails := s.failures("t2")
	sum := 0
	for k, n := range fails {
		sum += n
		if hop, reason, _ := strings.Cut(k, "/"); hop != "1" || reason != "down" && reason != "refused" && reason != "closed" {
			t.Errorf("%d failures at hop %s for %s: not what a killed child of hop 1 causes", n, hop, reason)
		}
	}
	return fails, sum
}

// checkPayload checks the payload bytes counted between two scrapes of
// chain t2 against what res carried: the ok connections' exactly, and at
// most all of the broken ones' besides.
func checkPayload(t *testing.T, before, after scrape, res *loadResult) {
	t.Helper()
	for _, dir := range []string{"upstream", "downstream"} {
		got := int64(after.value("ptcombiner_payload_bytes_total", "chain", "t2", "direction", dir) -
			before.value("ptcombiner_payload_bytes_total", "chain", "t2", "direction", dir))
		if got < res.okBytes.Load() || got > res.okBytes.Load()+res.maxBroken.Load() {
			t.Errorf("%s bytes %d, the test carried %d (and up to %d more on broken connections)", dir, got, res.okBytes.Load(), res.maxBroken.Load())
		}
	}
}

// checkRestartedOnce checks that the child killed started twice, exited
// and was restarted once, and that the other started once, for good.
func checkRestartedOnce(t *testing.T, s scrape, killed, other string) {
	t.Helper()
	for _, m := range []struct {
		name, child string
		want        float64
	}{
		{"ptcombiner_child_starts_total", killed, 2}, {"ptcombiner_child_restarts_total", killed, 1},
		{"ptcombiner_child_exits_total", killed, 1},
		{"ptcombiner_child_starts_total", other, 1}, {"ptcombiner_child_restarts_total", other, 0},
		{"ptcombiner_child_exits_total", other, 0},
	} {
		if got := s.value(m.name, "child", m.child); got != m.want {
			t.Errorf("%s{child=%q} = %v, want %v", m.name, m.child, got, m.want)
		}
	}
}

// oneStream carries payload through the test PT chain of keys over conn
// and checks the echo.
func oneStream(conn *net.TCPConn, keys []byte, payload []byte) error {
	rw, err := newTestptStream(conn, keys)
	if err != nil {
		return err
	}
	go rw.Write(payload)
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(rw, got); err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo differs")
	}
	return nil
}

// Under tor, a --metrics address that cannot be read, or a host name
// beyond loopback, is an ENV-ERROR before VERSION (PROTOCOLS.md A10),
// for both programs.
func TestMetricsAddressRefused(t *testing.T) {
	for _, prog := range []string{"ptcombiner-client", "ptcombiner-server"} {
		for _, tc := range []struct{ addr, reason string }{
			{"localhost", "--metrics \"localhost\": want PORT"},
			{"127.0.0.1:http", "bad port"},
			{"nonesuch.invalid:9100", "nonesuch.invalid"},
		} {
			t.Run(prog+" "+tc.addr, func(t *testing.T) {
				stdout, _ := runManagedFailure(t, prog, []string{"--metrics", tc.addr})
				if !strings.HasPrefix(stdout, "ENV-ERROR ") || strings.Count(stdout, "\n") != 1 || !strings.Contains(stdout, tc.reason) {
					t.Errorf("stdout = %q, want one ENV-ERROR line with %q", stdout, tc.reason)
				}
			})
		}
	}
}

// Under tor, a --metrics port already taken is logged, and the chains are
// served without metrics; without tor it is an error.
func TestMetricsPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	c := startCombiner(t, []string{"t2"}, append(testpFlags(), "--metrics", taken)...)
	if _, ok := c.methods["t2"]; !ok {
		t.Fatalf("no CMETHOD t2: %v", c.errs)
	}
	if _, err := c.logs.waitFor(eventCeiling, "cannot serve metrics", "address already in use"); err != nil {
		t.Error(err)
	}
	out, err := exec.Command(bin("ptcombiner-client"), append(testpFlags(), "--listen", "t2=127.0.0.1:0", "--metrics", taken)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "address already in use") {
		t.Errorf("standalone with a taken --metrics port: %v, %s", err, out)
	}
}

// Bytes are counted as they pass, not when a connection ends (tor keeps a
// connection to its bridge for hours): through both programs standalone,
// one connection open after carrying 200 kB each way shows them on both
// endpoints, spliced as they are; closing it adds nothing.
func TestMetricsBytesLive(t *testing.T) {
	const size = 200000
	echo := echoServer(t)
	plugin := "test=" + bin("testpt")
	smetrics, cmetrics := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	srv := startStandalone(t, 1, bin("ptcombiner-server"), "--plugin", plugin, "--chain", "t2=test|test",
		"--listen", "t2=127.0.0.1:0", "--forward", echo, "--state-dir", t.TempDir(), "--metrics", smetrics)
	f := strings.Fields(srv[0]) // CHAIN t2 <addr> ARGS <args>
	cli := startStandalone(t, 1, bin("ptcombiner-client"), "--plugin", plugin, "--chain", "t2=test|test",
		"--tunnel", "127.0.0.1:0=t2@"+f[2], "--args", "t2="+f[4], "--metrics", cmetrics)
	raw, err := net.Dial("tcp", strings.Fields(cli[0])[2]) // TUNNEL t2 <addr> -> <bridge>
	if err != nil {
		t.Fatal(err)
	}
	conn := raw.(*net.TCPConn)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(eventCeiling))
	msg := make([]byte, size)
	rand.Read(msg)
	go conn.Write(msg)
	if _, err := io.ReadFull(conn, make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	check := func(when string, open float64) {
		for _, addr := range []string{cmetrics, smetrics} {
			var s scrape
			waitFor(t, "200 kB each way on "+addr, eventCeiling, func() bool {
				s = scrapeMetrics(t, addr)
				return s.value("ptcombiner_payload_bytes_total", "direction", "downstream") >= size
			})
			up, down := s.value("ptcombiner_payload_bytes_total", "direction", "upstream"), s.value("ptcombiner_payload_bytes_total", "direction", "downstream")
			if up != size || down != size || s.value("ptcombiner_connections_open", "chain", "t2") != open {
				t.Errorf("%s, %s: %v bytes up, %v down, %v open; want %d each way, %v open", when, addr, up, down,
					s.value("ptcombiner_connections_open", "chain", "t2"), size, open)
			}
		}
	}
	check("while the connection is open", 1)
	conn.Close()
	waitOpenZero(t, cmetrics, "t2")
	waitOpenZero(t, smetrics, "t2")
	check("after it closed", 0)
}
