package transport

// This file is the only one that knows the module gitlab.com/yawning/obfs4.git:
// moving the in-process transports to another implementation (lyrebird)
// changes this file alone.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"gitlab.com/yawning/obfs4.git/transports/base"
	"gitlab.com/yawning/obfs4.git/transports/obfs2"
	"gitlab.com/yawning/obfs4.git/transports/obfs3"
	"gitlab.com/yawning/obfs4.git/transports/obfs4"
	"gitlab.com/yawning/obfs4.git/transports/scramblesuit"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// builtin is one in-process transport of the module.
type builtin struct {
	t           base.Transport
	clientState bool // its client keeps state (scramblesuit's tickets)
	server      bool // it has a server side
	// serverStateFile is the file its server keeps its state in, "" for
	// none.
	serverStateFile string
	// checkClientArgs, when set, checks arguments the module would
	// misreport.
	checkClientArgs func(metadata.Args) error
	// heldAfterHandshake: its client keeps the bytes that came in the
	// same read as the server's handshake undecoded until another read
	// from the network returns (see kickConn).
	heldAfterHandshake bool
}

var builtins = map[string]builtin{
	"obfs2": {t: new(obfs2.Transport), server: true},
	"obfs3": {t: new(obfs3.Transport), server: true},
	"obfs4": {t: new(obfs4.Transport), server: true, serverStateFile: "obfs4_state.json",
		checkClientArgs: checkObfs4Args, heldAfterHandshake: true},
	"scramblesuit": {t: new(scramblesuit.Transport), clientState: true, heldAfterHandshake: true},
}

// BuiltinMethods lists the in-process methods, sorted; server tells
// whether only those with a server side.
func BuiltinMethods(server bool) []string {
	var out []string
	for name, b := range builtins {
		if b.server || !server {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

func lookupBuiltin(method string) (builtin, error) {
	b, ok := builtins[method]
	if !ok {
		return builtin{}, fmt.Errorf("transport: no builtin method %q (there are %v)", method, BuiltinMethods(false))
	}
	return b, nil
}

// BuiltinClient is the client side of the in-process methods: obfs2,
// obfs3, obfs4 and scramblesuit. scramblesuit keeps its session tickets in
// ClientConfig.StateDir and refuses to start without one.
func BuiltinClient() ClientTransport { return builtinClient{} }

type builtinClient struct{}

func (builtinClient) Start(_ context.Context, cfg ClientConfig) (Client, error) {
	if len(cfg.Methods) == 0 {
		return nil, errors.New("transport: no builtin method asked for")
	}
	dialers := make(map[string]Dialer, len(cfg.Methods))
	for _, m := range cfg.Methods {
		b, err := lookupBuiltin(m)
		if err != nil {
			return nil, err
		}
		if b.clientState {
			if err := makeStateDir(m, cfg.StateDir); err != nil {
				return nil, err
			}
		}
		cf, err := b.t.ClientFactory(cfg.StateDir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m, err)
		}
		dialers[m] = moduleDialer{method: m, cf: cf, check: b.checkClientArgs, kick: b.heldAfterHandshake}
	}
	return dialerSet(dialers), nil
}

// dialerSet is a Client of in-process dialers: nothing to release.
type dialerSet map[string]Dialer

func (s dialerSet) Dialers() map[string]Dialer {
	out := make(map[string]Dialer, len(s))
	for k, v := range s {
		out[k] = v
	}
	return out
}

func (dialerSet) Close() error { return nil }

// moduleDialer is the client side of one of the module's methods.
type moduleDialer struct {
	method string
	cf     base.ClientFactory
	check  func(metadata.Args) error
	kick   bool // give the module a kickConn
}

func (d moduleDialer) Dial(ctx context.Context, args metadata.Args, addr string, under DialFunc) (Conn, error) {
	start := time.Now()
	if d.check != nil {
		if err := d.check(args); err != nil {
			return nil, fmt.Errorf("%s: %w", d.method, err)
		}
	}
	if args == nil {
		args = metadata.Args{}
	}
	// ParseArgs comes first: obfs4 makes its session key before it
	// connects, so the time that takes is not seen on the wire.
	parsed, err := d.cf.ParseArgs(&args)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.method, err)
	}
	if under == nil {
		under = Direct
	}
	lower, err := under(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.method, err)
	}
	var beneath net.Conn = lower
	var kick *kickConn
	if d.kick {
		kick = &kickConn{Conn: lower}
		beneath = kick
	}
	c, err := handshake(ctx, lower, start, func() (net.Conn, error) {
		return d.cf.Dial("tcp", addr, func(string, string) (net.Conn, error) { return beneath, nil }, parsed)
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.method, err)
	}
	if kick != nil {
		kick.armed.Store(true)
	}
	return c, nil
}

// kickConn works around the module's obfs4 and scramblesuit clients (and
// obfs4proxy's, the same code; PROTOCOLS.md): their Read reads from the
// network first and only then decodes what they hold, so the frames that
// came in the same read as the server's handshake wait for more bytes from
// the network, forever when the server waits for the client (obfs3 inside
// obfs4, a server that greets). Armed after the handshake, its first Read
// returns at once with nothing, which makes the module decode what it holds
// (an empty buffer: it reads again, from the network).
type kickConn struct {
	net.Conn
	armed atomic.Bool
}

func (c *kickConn) Read(p []byte) (int, error) {
	if c.armed.CompareAndSwap(true, false) {
		return 0, nil
	}
	return c.Conn.Read(p)
}

// checkObfs4Args checks what the module misreports of obfs4's arguments:
// with neither cert nor the old node-id it asks for node-id, and it
// reports an iat-mode that is not a number as 0.
func checkObfs4Args(args metadata.Args) error {
	_, cert := args.Get("cert")
	_, nodeID := args.Get("node-id")
	if !cert && !nodeID {
		return errors.New("missing argument 'cert' (the bridge line's cert=...)")
	}
	v, ok := args.Get("iat-mode")
	if !ok {
		return nil // the module says it is missing
	}
	if n, err := strconv.Atoi(v); err != nil || n < 0 || n > 2 {
		return fmt.Errorf("iat-mode must be 0, 1 or 2, not %q", v)
	}
	return nil
}

// BuiltinServer is the server side of an in-process method: obfs2, obfs3
// or obfs4. obfs4 keeps its state in ServerConfig.StateDir, in the module's
// obfs4_state.json, generated on first start.
func BuiltinServer(method string) (ServerTransport, error) {
	b, err := lookupBuiltin(method)
	if err != nil {
		return nil, err
	}
	if !b.server {
		return nil, fmt.Errorf("transport: builtin method %s has no server side", method)
	}
	return moduleServerTransport{method: method, b: b}, nil
}

type moduleServerTransport struct {
	method string
	b      builtin
}

func (s moduleServerTransport) Start(_ context.Context, cfg ServerConfig) (Server, error) {
	existing := ""
	if s.b.serverStateFile != "" {
		if err := makeStateDir(s.method, cfg.StateDir); err != nil {
			return nil, err
		}
		path := filepath.Join(cfg.StateDir, s.b.serverStateFile)
		if _, err := os.Stat(path); err == nil {
			existing = path
		}
	}
	opts := copyArgs(cfg.Options)
	sf, err := s.b.t.ServerFactory(cfg.StateDir, &opts)
	switch {
	case err != nil && existing != "":
		return nil, fmt.Errorf("%s: the server state in %s is malformed or unusable: %w "+
			"(to start afresh, move it away: the server then has a new identity, and its clients need the new bridge line)",
			s.method, existing, err)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", s.method, err)
	}
	var clientArgs metadata.Args
	if a := sf.Args(); a != nil {
		clientArgs = copyArgs(*a)
	}
	return moduleServer{method: s.method, sf: sf, clientArgs: clientArgs}, nil
}

// moduleServer is the server side of one of the module's methods.
type moduleServer struct {
	method     string
	sf         base.ServerFactory
	clientArgs metadata.Args
}

func (s moduleServer) ClientArgs() metadata.Args { return copyArgs(s.clientArgs) }

func (s moduleServer) WrapConn(ctx context.Context, lower net.Conn) (Conn, error) {
	c, err := handshake(ctx, lower, time.Now(), func() (net.Conn, error) { return s.sf.WrapConn(lower) })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.method, err)
	}
	return c, nil
}

func (moduleServer) Close() error { return nil }

// makeStateDir creates a method's state directory, which it needs.
func makeStateDir(method, dir string) error {
	if dir == "" {
		return fmt.Errorf("transport: builtin method %s keeps state and needs a state directory", method)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%s: state directory: %w", method, err)
	}
	return nil
}
