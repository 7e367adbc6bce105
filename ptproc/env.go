package ptproc

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// Role is the side of the protocol a child plays: [Client] or [Server].
type Role int

const (
	// Client children get TOR_PT_CLIENT_TRANSPORTS and answer with CMETHODs.
	Client Role = iota + 1
	// Server children get TOR_PT_SERVER_TRANSPORTS and answer with SMETHODs.
	Server
)

func (r Role) String() string {
	switch r {
	case Client:
		return "client"
	case Server:
		return "server"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// doneKeyword is the keyword of the line that ends the role's
// configuration phase.
func (r Role) doneKeyword() string {
	if r == Server {
		return kwSmethodsDone
	}
	return kwCmethodsDone
}

// Defaults of [Spec].
const (
	DefaultStartTimeout = 30 * time.Second
	DefaultStopGrace    = 2 * time.Second
	// defaultBindAddr is sent for a server method with no BindAddrs entry:
	// goptlib's ServerSetup silently drops a transport that has no
	// TOR_PT_SERVER_BINDADDR entry (PROTOCOLS.md C).
	defaultBindAddr = "127.0.0.1:0"
)

// ErrSpec is wrapped by every error about an invalid [Spec].
var ErrSpec = errors.New("invalid child spec")

// Spec describes one child PT program and the environment it is given.
// Start validates it; fields of the other role must be empty.
type Spec struct {
	// Name labels the child in logs and errors (e.g. "obfs4proxy").
	Name string
	// Path is the program; a name without '/' is looked up in PATH.
	Path string
	Args []string
	Role Role
	// Methods become TOR_PT_CLIENT_TRANSPORTS or TOR_PT_SERVER_TRANSPORTS,
	// deduplicated, order kept. Each must be a C identifier.
	Methods []string
	// StateDir is the child's own TOR_PT_STATE_LOCATION; absolute; Start
	// creates it 0700.
	StateDir string
	// ProxyURL (client) is TOR_PT_PROXY; "" means none. When set, the child
	// must answer PROXY DONE before CMETHODS DONE (PROTOCOLS.md A15).
	ProxyURL string
	// Options (server) become TOR_PT_SERVER_TRANSPORT_OPTIONS.
	Options map[string]pt.Args
	// BindAddrs (server) maps a method to the "ip:port" it must listen on;
	// a method without an entry gets "127.0.0.1:0".
	BindAddrs map[string]string
	// ORPort (server) is TOR_PT_ORPORT; "" leaves it unset.
	ORPort string
	// ExtORPort (server) is TOR_PT_EXTENDED_SERVER_PORT, always set (empty
	// when there is none), as tor does (PROTOCOLS.md A7).
	ExtORPort string
	// AuthCookieFile (server) is TOR_PT_AUTH_COOKIE_FILE; "" leaves it unset.
	AuthCookieFile string
	// OutboundBindV4 and OutboundBindV6 are TOR_PT_OUTBOUND_BIND_ADDRESS_V4
	// and _V6 when not empty; an IPv6 address is sent in brackets (A4).
	OutboundBindV4, OutboundBindV6 string
	// StartTimeout bounds the wait for *METHODS DONE; 0 means 30 s.
	StartTimeout time.Duration
	// StopGrace is how long Close waits after closing stdin, and again
	// after SIGTERM, before the next step; 0 means 2 s.
	StopGrace time.Duration
	// Logger receives stderr lines at Debug and LOG lines at their
	// severity, with the child's name and pid; nil means slog.Default().
	Logger *slog.Logger
	// OnLog, when set, is called with every LOG line's severity and
	// message, already sanitised, so the caller can relay it to tor.
	OnLog func(severity Severity, message string)
	// OnStatus, when set, is called with every STATUS line's arguments,
	// sanitised. Callbacks run on the stdout reader: a slow callback
	// delays the reading of the child's stdout, and one that calls Close
	// deadlocks. None runs after Close has returned.
	OnStatus func(args string)
}

// methods returns s.Methods deduplicated, in their first order.
func (s *Spec) methods() []string {
	seen := make(map[string]bool, len(s.Methods))
	out := make([]string, 0, len(s.Methods))
	for _, m := range s.Methods {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	return out
}

// validate reports the first problem of s that would make the environment
// ambiguous or the child unusable.
func (s *Spec) validate() error {
	if s.Path == "" {
		return fmt.Errorf("%w: no Path", ErrSpec)
	}
	if s.Role != Client && s.Role != Server {
		return fmt.Errorf("%w: role %v is neither Client nor Server", ErrSpec, s.Role)
	}
	if len(s.Methods) == 0 {
		return fmt.Errorf("%w: no Methods", ErrSpec)
	}
	want := make(map[string]bool, len(s.Methods))
	for _, m := range s.Methods {
		// The names are joined by ',' and, in BINDADDR, followed by '-':
		// only C identifiers (what tor accepts, A12) keep that unambiguous.
		if !isCIdentifier(m) {
			return fmt.Errorf("%w: method %q is not a C identifier", ErrSpec, m)
		}
		want[m] = true
	}
	if !filepath.IsAbs(s.StateDir) {
		return fmt.Errorf("%w: StateDir %q is not absolute", ErrSpec, s.StateDir)
	}
	if s.StartTimeout < 0 || s.StopGrace < 0 {
		return fmt.Errorf("%w: negative StartTimeout or StopGrace", ErrSpec)
	}
	if s.Role == Client {
		if len(s.Options) > 0 || len(s.BindAddrs) > 0 || s.ORPort != "" || s.ExtORPort != "" || s.AuthCookieFile != "" {
			return fmt.Errorf("%w: server fields set for a client child", ErrSpec)
		}
	} else {
		if s.ProxyURL != "" {
			return fmt.Errorf("%w: ProxyURL set for a server child", ErrSpec)
		}
		for m := range s.Options {
			if !want[m] {
				return fmt.Errorf("%w: Options for %q, which is not among Methods", ErrSpec, m)
			}
		}
		for m, a := range s.BindAddrs {
			if !want[m] {
				return fmt.Errorf("%w: BindAddrs for %q, which is not among Methods", ErrSpec, m)
			}
			if _, err := netip.ParseAddrPort(a); err != nil {
				return fmt.Errorf("%w: BindAddrs[%s]: %w", ErrSpec, m, err)
			}
		}
	}
	for _, v := range []string{s.StateDir, s.ProxyURL, s.ORPort, s.ExtORPort, s.AuthCookieFile, s.OutboundBindV4, s.OutboundBindV6} {
		if strings.ContainsAny(v, "\x00\n") {
			return fmt.Errorf("%w: NUL or newline in an environment value", ErrSpec)
		}
	}
	return nil
}

// BuildEnv returns the child's environment: parent without any TOR_PT_*
// variable (PROTOCOLS.md A7: "a parent must strip every inherited TOR_PT_*"),
// then, in this fixed order, TOR_PT_MANAGED_TRANSPORT_VER=1 (A1: "tor always
// sends 1"), TOR_PT_STATE_LOCATION, TOR_PT_EXIT_ON_STDIN_CLOSE=1 (A3),
// TOR_PT_OUTBOUND_BIND_ADDRESS_V4/_V6 when set, and the role's variables:
//
//	client: TOR_PT_CLIENT_TRANSPORTS, TOR_PT_PROXY (when set)
//	server: TOR_PT_SERVER_TRANSPORTS, TOR_PT_SERVER_TRANSPORT_OPTIONS (when
//	        any), TOR_PT_SERVER_BINDADDR (every method), TOR_PT_ORPORT (when
//	        set), TOR_PT_EXTENDED_SERVER_PORT (always), TOR_PT_AUTH_COOKIE_FILE
//	        (when set)
//
// BuildEnv does not validate s; Start does.
func BuildEnv(parent []string, s Spec) []string {
	env := make([]string, 0, len(parent)+12)
	for _, kv := range parent {
		if !strings.HasPrefix(kv, "TOR_PT_") {
			env = append(env, kv)
		}
	}
	set := func(k, v string) { env = append(env, k+"="+v) }
	methods := s.methods()
	set("TOR_PT_MANAGED_TRANSPORT_VER", "1")
	set("TOR_PT_STATE_LOCATION", s.StateDir)
	set("TOR_PT_EXIT_ON_STDIN_CLOSE", "1")
	if s.OutboundBindV4 != "" {
		set("TOR_PT_OUTBOUND_BIND_ADDRESS_V4", s.OutboundBindV4)
	}
	if v6 := s.OutboundBindV6; v6 != "" {
		// A4: "_V6=[2001:db8::4] (brackets)".
		if !strings.HasPrefix(v6, "[") {
			v6 = "[" + v6 + "]"
		}
		set("TOR_PT_OUTBOUND_BIND_ADDRESS_V6", v6)
	}
	switch s.Role {
	case Client:
		set("TOR_PT_CLIENT_TRANSPORTS", strings.Join(methods, ","))
		if s.ProxyURL != "" {
			set("TOR_PT_PROXY", s.ProxyURL)
		}
	case Server:
		set("TOR_PT_SERVER_TRANSPORTS", strings.Join(methods, ","))
		opts := make(map[string]pt.Args)
		for _, m := range methods {
			if len(s.Options[m]) > 0 {
				opts[m] = s.Options[m]
			}
		}
		if len(opts) > 0 {
			set("TOR_PT_SERVER_TRANSPORT_OPTIONS", metadata.EncodeServerTransportOptions(opts))
		}
		binds := make([]string, 0, len(methods))
		for _, m := range methods {
			addr := s.BindAddrs[m]
			if addr == "" {
				addr = defaultBindAddr
			}
			// pt-spec.txt 3.2.3: "<transport>-<address>:<port>", comma-separated.
			binds = append(binds, m+"-"+addr)
		}
		set("TOR_PT_SERVER_BINDADDR", strings.Join(binds, ","))
		if s.ORPort != "" {
			set("TOR_PT_ORPORT", s.ORPort)
		}
		set("TOR_PT_EXTENDED_SERVER_PORT", s.ExtORPort)
		if s.AuthCookieFile != "" {
			set("TOR_PT_AUTH_COOKIE_FILE", s.AuthCookieFile)
		}
	}
	return env
}
