package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ListenAddr reads --metrics: a port alone ("9100") or an address with
// no host (":9100") listens on 127.0.0.1; a host name must resolve to
// loopback addresses only ("localhost:9100"); any other address must be
// an IP literal, given explicitly as such ("0.0.0.0:9100" for every
// interface, "192.0.2.1:9100", "[::]:9100"). public says whether the
// address is beyond loopback, for a warning.
func ListenAddr(ctx context.Context, v string) (addr string, public bool, err error) {
	if _, err := strconv.ParseUint(v, 10, 16); err == nil {
		return net.JoinHostPort("127.0.0.1", v), false, nil
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", false, fmt.Errorf("--metrics %q: want PORT, :PORT, HOST:PORT or IP:PORT: %w", v, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", false, fmt.Errorf("--metrics %q: bad port %q", v, port)
	}
	if host == "" {
		return net.JoinHostPort("127.0.0.1", port), false, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return net.JoinHostPort(host, port), !ip.IsLoopback(), nil
	}
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return "", false, fmt.Errorf("--metrics %q: %w", v, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return "", false, fmt.Errorf("--metrics %q: %s resolves to %v, beyond loopback; to serve metrics there, give the IP address itself", v, host, ip.IP)
		}
	}
	return net.JoinHostPort(host, port), false, nil
}

// Server serves a Registry's metrics over HTTP at /metrics.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Serve listens on addr (ListenAddr's) and serves r at /metrics until
// Close.
func Serve(addr string, r *Registry) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	mux := http.NewServeMux()
	// ContinueOnError: a collector that cannot read (the process
	// collector's /proc files, under a profile that denies them) leaves
	// its series out rather than failing the scrape.
	mux.Handle("/metrics", promhttp.HandlerFor(r.Gatherer(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/" {
			http.NotFound(w, req)
			return
		}
		fmt.Fprintln(w, "ptcombiner: metrics at /metrics")
	})
	s := &Server{ln: ln, done: make(chan struct{}), srv: &http.Server{Handler: mux,
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// Addr is where the server listens.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server and its connections, and waits for it.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
