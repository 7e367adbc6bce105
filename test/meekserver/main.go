// Command meekserver is the test suite's stand-in for the Tor Project's
// meek-server: a PT 1.0 server program on goptlib that speaks meek's HTTP
// exchange, in plain HTTP only (meek-server's --disable-tls), so that a
// chain ending in meek runs offline with obfs4proxy's meek_lite as the
// client.
//
// The exchange, as meek-server serves it: the client POSTs to the URL, with
// a header X-Session-Id naming its session (at least 8 bytes) and the
// bytes it sends as the body (at most 64 KiB). The first POST of a session
// opens the session's connection to the (Extended) ORPort; every POST's
// body is written to it, and the response's body is what the ORPort
// connection has for the client within a short turnaround (10 ms), at most
// 64 KiB; a client with nothing to send polls with empty POSTs. A session
// idle for 120 s is closed. GET / answers a short text, as meek-server's
// does.
//
// USERADDR is what meek-server reports: the client's IP, taken from the
// Meek-IP header, else the first address of X-Forwarded-For (what a CDN
// sets), else the HTTP connection's remote address, with port 1; nothing
// when none parses. TRANSPORT is "meek". Like meek-server, it refuses to
// listen on port 0 ("configure a port using ServerTransportListenAddr").
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

const (
	method            = "meek"
	minSessionIDLen   = 8
	maxPayload        = 0x10000
	turnaround        = 10 * time.Millisecond
	sessionStaleness  = 120 * time.Second
	readWriteDeadline = 20 * time.Second
)

func main() {
	info, err := pt.ServerSetup(nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meekserver:", err)
		os.Exit(1)
	}
	var servers []*http.Server
	for _, b := range info.Bindaddrs {
		if b.MethodName != method {
			pt.SmethodError(b.MethodName, "no such method")
			continue
		}
		if b.Addr.Port == 0 {
			pt.SmethodError(b.MethodName, "cannot listen on port 0; configure a port using ServerTransportListenAddr")
			continue
		}
		ln, err := net.ListenTCP("tcp", b.Addr)
		if err != nil {
			pt.SmethodError(b.MethodName, err.Error())
			continue
		}
		st := newState(&info)
		srv := &http.Server{Handler: st, ReadTimeout: readWriteDeadline, WriteTimeout: readWriteDeadline}
		go srv.Serve(ln)
		go st.expire()
		servers = append(servers, srv)
		pt.Smethod(b.MethodName, ln.Addr())
	}
	pt.SmethodsDone()
	waitForEnd()
	for _, s := range servers {
		s.Close()
	}
}

// waitForEnd returns on stdin's EOF (TOR_PT_EXIT_ON_STDIN_CLOSE=1),
// SIGTERM or SIGINT (pt-spec 3.4).
func waitForEnd() {
	end := make(chan struct{}, 2)
	if os.Getenv("TOR_PT_EXIT_ON_STDIN_CLOSE") == "1" {
		go func() {
			io.Copy(io.Discard, os.Stdin)
			end <- struct{}{}
		}()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-end:
	case <-sigs:
	}
}

// session is one client's meek session: its ORPort connection, which the
// session's POSTs use one at a time.
type session struct {
	mu       sync.Mutex
	or       net.Conn
	lastSeen time.Time
}

type state struct {
	info     *pt.ServerInfo
	mu       sync.Mutex
	sessions map[string]*session
}

func newState(info *pt.ServerInfo) *state {
	return &state{info: info, sessions: map[string]*session{}}
}

func (st *state) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "I’m just a happy little web server.\n")
	case http.MethodPost:
		st.post(w, r)
	default:
		http.Error(w, "Bad request.", http.StatusBadRequest)
	}
}

func (st *state) post(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Session-Id")
	if len(id) < minSessionIDLen {
		http.Error(w, "Bad request.", http.StatusBadRequest)
		return
	}
	s, err := st.session(id, r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "meekserver: ORPort:", err)
		http.Error(w, "Internal server error.", http.StatusInternalServerError)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := exchange(s.or, w, r); err != nil {
		fmt.Fprintln(os.Stderr, "meekserver:", err)
		st.close(id)
	}
}

// session returns the session id, opening its ORPort connection the first
// time, as the client that r names.
func (st *state) session(id string, r *http.Request) (*session, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.sessions[id]
	if s == nil {
		or, err := pt.DialOr(st.info, useraddr(r), method)
		if err != nil {
			return nil, err
		}
		s = &session{or: or}
		st.sessions[id] = s
	}
	s.lastSeen = time.Now()
	return s, nil
}

// exchange writes r's body to or and answers with what or has within the
// turnaround.
func exchange(or net.Conn, w http.ResponseWriter, r *http.Request) error {
	if _, err := io.Copy(or, http.MaxBytesReader(w, r.Body, maxPayload+1)); err != nil {
		return fmt.Errorf("copying the body to the ORPort: %w", err)
	}
	buf := make([]byte, maxPayload)
	or.SetReadDeadline(time.Now().Add(turnaround))
	n, err := or.Read(buf)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		http.Error(w, "Internal server error.", http.StatusInternalServerError)
		return fmt.Errorf("reading the ORPort: %w", err)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, err = w.Write(buf[:n])
	return err
}

func (st *state) close(id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s, ok := st.sessions[id]; ok {
		s.or.Close()
		delete(st.sessions, id)
	}
}

// expire closes sessions idle for sessionStaleness.
func (st *state) expire() {
	for range time.Tick(sessionStaleness / 2) {
		st.mu.Lock()
		for id, s := range st.sessions {
			if time.Since(s.lastSeen) > sessionStaleness {
				s.or.Close()
				delete(st.sessions, id)
			}
		}
		st.mu.Unlock()
	}
}

// useraddr is the client's address as meek-server reports it: the IP that
// the front says (Meek-IP, else the first of X-Forwarded-For), else the
// connection's, with port 1; "" when none parses.
func useraddr(r *http.Request) string {
	host := r.Header.Get("Meek-IP")
	if host == "" {
		host = r.Header.Get("X-Forwarded-For")
	}
	if host != "" {
		host, _, _ = strings.Cut(host, ",")
		host = strings.TrimSpace(host)
	} else {
		host, _, _ = net.SplitHostPort(r.RemoteAddr)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return ""
	}
	return net.JoinHostPort(ip.String(), "1")
}
