// Package metrics owns what ptcombiner-client and ptcombiner-server tell
// of themselves: a Registry per process that hears the engines (it is a
// chain.Observer, the only place Prometheus types meet the engines), its
// exposition in Prometheus' text format on --metrics (Serve, ListenAddr),
// and the same counters as PT 1.0 STATUS lines towards tor (StatusLines,
// ReportStatus). docs/bridge.md and docs/client.md list every metric.
//
// Labels: chain is the alias (tor's transport name); hop numbers a chain's
// hops as N.key does, 0 the innermost (the one the application's bytes
// enter first) on both sides, so in a chain a|b hop 1 is b, the one on the
// wire; hop "none" is no hop (bad arguments, the cap, the engine stopping)
// and "dest" the server's destination after hop 0 (tor, or --forward).
package metrics

import (
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ptcombiner/ptcombiner/chain"
)

// SetupBuckets are the setup histogram's upper bounds, in seconds: a
// chain of loopback hops sets up in milliseconds, one across the world
// and through a CDN in seconds, and the setup gives up at a minute.
var SetupBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

var (
	descOpened = prometheus.NewDesc("ptcombiner_connections_opened_total",
		"Chained connections opened: accepted (server) or asked for (client), whether their setup succeeded or not.",
		[]string{"chain"}, nil)
	descFailed = prometheus.NewDesc("ptcombiner_connections_failed_total",
		"Chained connections whose setup failed, by the hop that failed (0 is the innermost, as in N.key; none: no hop; dest: the server's tor or --forward service) and why.",
		[]string{"chain", "hop", "reason"}, nil)
	descOpen = prometheus.NewDesc("ptcombiner_connections_open",
		"Chained connections open now, being set up or established.",
		[]string{"chain"}, nil)
	descBytes = prometheus.NewDesc("ptcombiner_payload_bytes_total",
		"Application bytes carried by chained connections, as they pass, upstream (towards the bridge and tor) or downstream.",
		[]string{"chain", "direction"}, nil)
	descStarts          = childDesc("ptcombiner_child_starts_total", "Starts of a PT program's instance, restarts included.")
	descRestarts        = childDesc("ptcombiner_child_restarts_total", "Restarts of a PT program's instance after it exited.")
	descExits           = childDesc("ptcombiner_child_exits_total", "Exits of a PT program's instance that nobody asked for; a restart follows each.")
	descRestartFailures = childDesc("ptcombiner_child_restart_failures_total", "Restarts of a PT program's instance that failed; another follows, with backoff.")
	descExtOR           = prometheus.NewDesc("ptcombiner_extorport_handshakes_total",
		"Extended ORPort exchanges, with the server's children (on the Extended ORPort it serves each) or with tor, by outcome.",
		[]string{"peer", "outcome"}, nil)
	descBuild = prometheus.NewDesc("ptcombiner_build_info",
		"Always 1: the program's role and version.",
		[]string{"role", "version"}, nil)
)

// childDesc describes a counter of a PT program's instance: program is its
// file name, child the instance as the log names it (obfs4proxy#1).
func childDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, []string{"program", "child"}, nil)
}

// extORSeries are the Extended ORPort series shown, zeros included, on the
// server: every outcome with the children, ok and failed with tor.
var extORSeries = []struct {
	peer    chain.ExtORPeer
	outcome chain.ExtOROutcome
}{
	{chain.PeerChild, chain.ExtOK}, {chain.PeerChild, chain.ExtFailed},
	{chain.PeerChild, chain.ExtUnmatched}, {chain.PeerChild, chain.ExtDenied},
	{chain.PeerTor, chain.ExtOK}, {chain.PeerTor, chain.ExtFailed},
}

// Registry is one process's metrics. It is a chain.Observer; its methods
// are safe for concurrent use.
type Registry struct {
	role, version string
	prom          *prometheus.Registry
	setup         *prometheus.HistogramVec

	mu       sync.RWMutex
	chains   map[string]*chainStats
	children map[childKey]*childStats

	extMu sync.Mutex
	extOR map[[2]string]int64
}

var _ chain.Observer = (*Registry)(nil)

type chainStats struct {
	opened, open, up, down atomic.Int64
	setup                  prometheus.Observer

	mu     sync.Mutex
	failed map[failKey]int64
}

type failKey struct{ hop, reason string }

type childKey struct{ program, child string }

type childStats struct{ starts, restarts, exits, restartFailures atomic.Int64 }

// New returns the registry of a program of role ("client" or "server") at
// version, with the Go runtime's and the process's collectors.
func New(role, version string) *Registry {
	r := &Registry{role: role, version: version, prom: prometheus.NewRegistry(),
		chains: map[string]*chainStats{}, children: map[childKey]*childStats{}, extOR: map[[2]string]int64{}}
	r.setup = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ptcombiner_connection_setup_seconds",
		Help:    "Time to set an established chained connection up through every hop: until the innermost hop granted (client), or tor answered OKAY (server).",
		Buckets: SetupBuckets,
	}, []string{"chain"})
	r.prom.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.setup, collector{r})
	return r
}

// Gatherer is what Serve exposes.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.prom }

// Chains makes the series of these chains, at zero, before any connection.
func (r *Registry) Chains(aliases ...string) {
	for _, a := range aliases {
		r.chain(a)
	}
}

func (r *Registry) chain(alias string) *chainStats {
	r.mu.RLock()
	cs := r.chains[alias]
	r.mu.RUnlock()
	if cs != nil {
		return cs
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cs = r.chains[alias]; cs == nil {
		cs = &chainStats{setup: r.setup.WithLabelValues(alias), failed: map[failKey]int64{}}
		r.chains[alias] = cs
	}
	return cs
}

func (r *Registry) ConnOpened(alias string) {
	cs := r.chain(alias)
	cs.opened.Add(1)
	cs.open.Add(1)
}

func (r *Registry) ConnFailed(alias string, hop int, reason chain.FailReason) {
	cs := r.chain(alias)
	cs.mu.Lock()
	cs.failed[failKey{hopLabel(hop), reason.String()}]++
	cs.mu.Unlock()
}

func (r *Registry) ConnEstablished(alias string, setup time.Duration) {
	r.chain(alias).setup.Observe(setup.Seconds())
}

func (r *Registry) ConnBytes(alias string, upstream, downstream int64) {
	cs := r.chain(alias)
	cs.up.Add(upstream)
	cs.down.Add(downstream)
}

func (r *Registry) ConnClosed(alias string) { r.chain(alias).open.Add(-1) }

func (r *Registry) ChildEvent(program, child string, kind chain.EventKind) {
	k := childKey{program, child}
	r.mu.Lock()
	st := r.children[k]
	if st == nil {
		st = &childStats{}
		r.children[k] = st
	}
	r.mu.Unlock()
	switch kind {
	case chain.EventStarted:
		st.starts.Add(1)
	case chain.EventRestarted:
		st.restarts.Add(1)
	case chain.EventExited:
		st.exits.Add(1)
	case chain.EventRestartFailed:
		st.restartFailures.Add(1)
	}
}

func (r *Registry) ExtORPort(peer chain.ExtORPeer, outcome chain.ExtOROutcome) {
	r.extMu.Lock()
	r.extOR[[2]string{peer.String(), outcome.String()}]++
	r.extMu.Unlock()
}

// hopLabel is a hop's label value.
func hopLabel(hop int) string {
	switch {
	case hop == chain.DestHop:
		return "dest"
	case hop < 0:
		return "none"
	}
	return strconv.Itoa(hop)
}

// ChainSnapshot is one chain's counters at one moment.
type ChainSnapshot struct {
	Alias                string
	Opened, Open         int64
	Upstream, Downstream int64
	Failed               int64
	FailedByHop          map[string]int64    // by hop label
	FailedByHopAndReason map[[2]string]int64 // by hop label and reason
}

// Snapshot returns every chain's counters, by alias.
func (r *Registry) Snapshot() []ChainSnapshot {
	r.mu.RLock()
	aliases := make([]string, 0, len(r.chains))
	for a := range r.chains {
		aliases = append(aliases, a)
	}
	r.mu.RUnlock()
	sort.Strings(aliases)
	out := make([]ChainSnapshot, 0, len(aliases))
	for _, a := range aliases {
		cs := r.chain(a)
		s := ChainSnapshot{Alias: a, Opened: cs.opened.Load(), Open: cs.open.Load(), Upstream: cs.up.Load(),
			Downstream: cs.down.Load(), FailedByHop: map[string]int64{}, FailedByHopAndReason: map[[2]string]int64{}}
		cs.mu.Lock()
		for k, n := range cs.failed {
			s.Failed += n
			s.FailedByHop[k.hop] += n
			s.FailedByHopAndReason[[2]string{k.hop, k.reason}] = n
		}
		cs.mu.Unlock()
		out = append(out, s)
	}
	return out
}

// collector exposes the registry's counters as they are at each scrape.
type collector struct{ r *Registry }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOpened, descFailed, descOpen, descBytes, descStarts, descRestarts,
		descExits, descRestartFailures, descExtOR, descBuild} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	ch <- prometheus.MustNewConstMetric(descBuild, prometheus.GaugeValue, 1, r.role, r.version)
	for _, s := range r.Snapshot() {
		ch <- prometheus.MustNewConstMetric(descOpened, prometheus.CounterValue, float64(s.Opened), s.Alias)
		ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(s.Open), s.Alias)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.Upstream), s.Alias, "upstream")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.Downstream), s.Alias, "downstream")
		for k, n := range s.FailedByHopAndReason {
			ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(n), s.Alias, k[0], k[1])
		}
	}
	r.mu.RLock()
	for k, st := range r.children {
		for _, m := range []struct {
			d *prometheus.Desc
			n int64
		}{{descStarts, st.starts.Load()}, {descRestarts, st.restarts.Load()}, {descExits, st.exits.Load()},
			{descRestartFailures, st.restartFailures.Load()}} {
			ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.n), k.program, k.child)
		}
	}
	r.mu.RUnlock()
	if r.role != "server" {
		return
	}
	r.extMu.Lock()
	defer r.extMu.Unlock()
	for _, e := range extORSeries {
		k := [2]string{e.peer.String(), e.outcome.String()}
		ch <- prometheus.MustNewConstMetric(descExtOR, prometheus.CounterValue, float64(r.extOR[k]), k[0], k[1])
	}
}
