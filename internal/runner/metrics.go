package runner

import (
	"context"
	"log/slog"
	"time"

	"github.com/urfave/cli/v2"
	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/internal/metrics"
)

// metricsFlags are --metrics and --status-interval, which both programs
// take.
func metricsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics at http://`ADDR`/metrics: a port alone or :PORT listens on 127.0.0.1; an address beyond loopback must be an IP given explicitly (0.0.0.0:PORT: every interface)"},
		&cli.DurationFlag{Name: "status-interval", Value: metrics.DefaultStatusInterval, Usage: "when run by tor, how often each chain's connection counters go to tor as STATUS lines (PT_STATUS events), when they changed; 0: never"},
	}
}

// Metrics is a program's metrics: the registry the engine reports to, its
// HTTP endpoint (--metrics) and, under tor, its STATUS lines.
type Metrics struct {
	reg    *metrics.Registry
	srv    *metrics.Server
	every  time.Duration
	cancel context.CancelFunc
	done   chan struct{}
}

// StartMetrics builds the registry when --metrics is given, or when run
// by tor with a --status-interval, and serves --metrics. It returns nil
// when neither is asked for: the engine then observes nothing. An
// address that cannot be read is an error; one that cannot be listened
// on too, except under tor, where the chains are served all the same and
// the error is logged.
func StartMetrics(c *cli.Context, log *slog.Logger, role string, managed bool) (*Metrics, error) {
	m := &Metrics{}
	if managed {
		m.every = c.Duration("status-interval")
	}
	addr := c.String("metrics")
	if addr == "" && m.every <= 0 {
		return nil, nil
	}
	m.reg = metrics.New(role, Version)
	if addr == "" {
		return m, nil
	}
	listen, public, err := metrics.ListenAddr(context.Background(), addr)
	if err != nil {
		return nil, err
	}
	if m.srv, err = metrics.Serve(listen, m.reg); err != nil {
		if !managed {
			return nil, err
		}
		log.Error("cannot serve metrics; the chains are served without", "err", err)
		return m, nil
	}
	if public {
		log.Warn("serving metrics beyond loopback: anyone who reaches the address sees them", "metrics", m.srv.Addr().String())
	} else {
		log.Info("serving metrics", "metrics", "http://"+m.srv.Addr().String()+"/metrics")
	}
	return m, nil
}

// Observer is what the engine reports to, or nil.
func (m *Metrics) Observer() chain.Observer {
	if m == nil {
		return nil
	}
	return m.reg
}

// Serving makes the chains' series (zeros) and, under tor, starts the
// STATUS lines; call it after *METHODS DONE.
func (m *Metrics) Serving(chains []string) {
	if m == nil {
		return
	}
	m.reg.Chains(chains...)
	if m.every <= 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go func() {
		defer close(m.done)
		m.reg.ReportStatus(ctx, pt.Stdout, m.every)
	}()
}

// Close stops the STATUS lines and the endpoint.
func (m *Metrics) Close() {
	if m == nil {
		return
	}
	if m.cancel != nil {
		m.cancel()
		<-m.done
	}
	if m.srv != nil {
		m.srv.Close()
	}
}
