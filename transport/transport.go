package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// DialFunc opens the connection a hop's own connection runs over: a TCP
// connection to addr, or, inside a chain, the connection of the next hop
// outward. A nil DialFunc means [Direct].
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

// Direct dials addr over TCP.
func Direct(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Dialer makes the client side of connections of one transport method (the
// seed's connection factory). Its methods are safe for concurrent use.
type Dialer interface {
	// Dial returns a connection to addr that is ready for the
	// application's bytes, with args as the connection settings (tor's
	// per-connection arguments: obfs4's cert and iat-mode). The
	// transport's own connection is opened by under, exactly once; nil
	// means Direct. On error every connection Dial opened is closed.
	Dial(ctx context.Context, args metadata.Args, addr string, under DialFunc) (Conn, error)
}

// Conn is a connection made by a transport: a net.Conn that also reports
// what it carried. Deadlines set on it reach the raw connection beneath
// every hop; see the package doc.
type Conn interface {
	net.Conn
	// Stats reports the connection's counters so far.
	Stats() Stats
}

// Stats are one connection's counters.
type Stats struct {
	Read    int64         // bytes the application read from the connection
	Written int64         // bytes the application wrote to it
	Setup   time.Duration // from the start of Dial or WrapConn until it was ready
}

// ClientConfig is a client transport's configuration.
type ClientConfig struct {
	// Methods are the methods to offer (TOR_PT_CLIENT_TRANSPORTS); a name
	// the transport does not know is an error.
	Methods []string
	// StateDir is the transport's own directory for long-term state
	// (scramblesuit keeps its session tickets there); created 0700 when
	// missing. A transport that keeps state refuses to start without one.
	StateDir string
}

// ClientTransport is the seed's transport factory: the client side of a
// program or a module that offers one or more methods.
type ClientTransport interface {
	// Start prepares the methods of cfg. ctx bounds the start only.
	Start(ctx context.Context, cfg ClientConfig) (Client, error)
}

// Client is a started client transport.
type Client interface {
	// Dialers returns the started methods' dialers by method name, in a
	// map of the caller's own.
	Dialers() map[string]Dialer
	// Close releases what the transport holds (processes, files). The
	// connections already made stay the caller's.
	Close() error
}

// ServerConfig is one server method's configuration.
type ServerConfig struct {
	// StateDir is the method's own directory for long-term state (obfs4's
	// node id, keys and drbg seed); created 0700 when missing.
	StateDir string
	// Options are the method's server options (tor's
	// ServerTransportOptions, e.g. obfs4's iat-mode).
	Options metadata.Args
}

// ServerTransport is the seed's server factory for one method.
type ServerTransport interface {
	// Start loads the server's state from cfg.StateDir, generating it on
	// first use, and returns the configured server. ctx bounds the start.
	Start(ctx context.Context, cfg ServerConfig) (Server, error)
}

// Server is the server side of one method (or of a chain), configured. Its
// methods are safe for concurrent use.
type Server interface {
	// ClientArgs are the arguments a client needs to reach this server,
	// the client's half of the configuration: obfs4's cert and iat-mode,
	// published in SMETHOD ARGS and in the bridge line. Empty for none.
	ClientArgs() metadata.Args
	// WrapConn runs the server side of the transport on conn, accepted
	// from the network or unwrapped by the hop outside this one, and
	// returns the connection that carries the application's bytes. On
	// error conn has been closed.
	WrapConn(ctx context.Context, conn net.Conn) (Conn, error)
	// Close releases what the server holds.
	Close() error
}

// Manager is a running server (the seed's server manager).
type Manager interface {
	// Close stops the server.
	Close() error
	// Stats reports the server's counters so far.
	Stats() ServerStats
}

// ServerStats are a running server's counters.
type ServerStats struct {
	Accepted int64 // connections accepted from the network
	Failed   int64 // of them, those whose handshake failed or timed out
	Open     int64 // connections handed over and not yet closed
	Read     int64 // bytes read from the handed-over connections
	Written  int64 // bytes written to them
}

// HopError is the error of one hop of a chain.
type HopError struct {
	Hop int // 0 is the innermost
	Err error
}

func (e *HopError) Error() string { return fmt.Sprintf("hop %d: %v", e.Hop, e.Err) }

func (e *HopError) Unwrap() error { return e.Err }

// ErrEmptyChain is returned by a chain of no hops.
var ErrEmptyChain = errors.New("a chain has at least one hop")
