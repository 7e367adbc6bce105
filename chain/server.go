package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ptcombiner/ptcombiner/extorport"
	"github.com/ptcombiner/ptcombiner/internal/loopback"
	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// Defaults for ServerOptions' zero values.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 10 * time.Second
	DefaultStampWait        = 2 * time.Second
	// DefaultArrivalTimeout exceeds the longest a PT holds a connection
	// without reporting it on purpose: obfs4's server gives a client's
	// handshake 30 s (serverHandshakeTimeout) and then, when the handshake
	// failed, as a prober's does, reads on for a bridge-specific 0-59 s
	// (closeDelay, below maxCloseDelay = 60) before it closes, 90 s in all
	// (obfs4 transports/obfs4/obfs4.go; obfs3's handshake timeout is 30 s).
	// A shorter bound would close probers' connections at a time of
	// ptcombiner's own, which a censor could tell from obfs4's.
	DefaultArrivalTimeout = 2 * time.Minute
)

// ServerOptions configure a Server. Zero values take the documented
// defaults, except Config and StateDir.
type ServerOptions struct {
	Config *Config
	// StateDir holds the server's own files: its children's cookies, each
	// hop's state (obfs4's keys, in process or in a child). Required, and
	// kept across restarts (obfs4's cert comes from it); Start creates it
	// 0700 when missing.
	StateDir string
	Logger   *slog.Logger

	// Where finished streams go: tor's Extended ORPort with its cookie file
	// (USERADDR = the real client, TRANSPORT = the alias), or else tor's
	// plain ORPort, or any TCP service (a Go program that serves a chain
	// without tor sets only TorORPort).
	TorExtORPort  string
	TorCookiePath string
	TorORPort     string
	// TorInstances are further Extended ORPorts, one per tor instance of
	// one bridge (they share its identity keys): each finished stream goes
	// to the one with the fewest open, skipping for a backoff one that
	// fails (see torPool). TorExtORPort, when set, is the first.
	TorInstances []TorInstance
	// ProxyHeaderTimeout bounds the read of a PROXY protocol header
	// (Config.ProxyProtocol; DefaultProxyHeaderTimeout).
	ProxyHeaderTimeout time.Duration
	// Streams, when set, takes every finished stream instead of tor or
	// TorORPort: a free server (package free) serves a session over it.
	// alias is the chain's, client the real client's ip:port. It must
	// close conn, and return soon after ctx ends (the server closing).
	Streams func(ctx context.Context, conn net.Conn, alias, client string)

	// InProcess are a program's own in-process server transports, by
	// method. A method of the configuration's builtin plugin (--builtin,
	// "ServerTransportPlugin NAMES builtin") is served by the transport
	// named here, else by package transport's builtin of that name.
	InProcess map[string]transport.ServerTransport

	StartTimeout     time.Duration // a child's start, up to SMETHODS DONE (DefaultStartTimeout)
	HandshakeTimeout time.Duration // each Extended ORPort handshake, either side (DefaultHandshakeTimeout)
	DialTimeout      time.Duration // each dial into a child or to tor (DefaultDialTimeout)
	// StampWait bounds how long an Extended ORPort arrival waits for its
	// stamp to be recorded (the child may be faster than our bookkeeping).
	StampWait time.Duration
	// ArrivalTimeout bounds how long a child may take, after ptcombiner
	// dialled into it, to come back on its Extended ORPort with that
	// connection (a client's handshake included); then the client's
	// connection is closed and the hop is named in the log
	// (DefaultArrivalTimeout). It bounds an in-process hop's handshake
	// too: obfs4's, like its program's, reads a failed client for up to
	// 90 s before it closes.
	ArrivalTimeout time.Duration
	// MaxConns caps the client connections open at once; further ones are
	// closed at once (0: no cap). Behind an outermost hop that listens
	// itself, a connection is counted when the hop reports it on its
	// Extended ORPort, and one above the cap is denied there.
	MaxConns   int
	OnChildLog func(program string, severity ptproc.Severity, message string)
	// OnEvent, when set, hears when a child exits and is restarted.
	OnEvent func(Event)
	// Observer, when set, hears every connection, child event and
	// Extended ORPort exchange, for metrics; nil costs nothing.
	Observer Observer
}

// Bind is what tor asks for one transport: its alias, the address to
// listen on, and its ServerTransportOptions (N.key for hop N).
type Bind struct {
	Alias   string
	Addr    *net.TCPAddr
	Options metadata.Args
}

// Published is what the server offers for one Bind: the address it listens
// on (or, when the chain's outermost hop listens itself, the address that
// hop's PT reports) and the arguments clients need (N.key for hop N), or why
// it cannot.
type Published struct {
	Alias string
	Addr  *net.TCPAddr
	Args  metadata.Args
	Err   error
}

// Server runs chains on the bridge side. It owns each chain's public
// listener, the children, one Extended ORPort listener per child, the
// stamps that tie every child's arrival to its chain connection, and the
// in-process hops.
type Server struct {
	opt ServerOptions
	log *slog.Logger
	// refusals limits the Extended ORPort refusals' warnings.
	refusals logLimit
	ctx      context.Context
	cancel   context.CancelFunc
	stamps   *stampBook
	tor      *torPool // nil: no Extended ORPort
	nextID   atomic.Uint64
	open     atomic.Int64 // client connections open, for MaxConns
	capWarn  atomic.Bool
	wg       sync.WaitGroup // accept loops and connections
	active   sync.WaitGroup // client connections, for draining
	sups     sync.WaitGroup // the children's supervisors

	mu        sync.Mutex
	children  []*serverChild
	inprocs   []*inprocHop
	listeners []net.Listener
	closed    bool
}

// serverChild is one server PT process and what it serves.
type serverChild struct {
	id      int
	plugin  int
	path    string
	args    []string
	options map[string]metadata.Args // by method; the TOR_PT_SERVER_TRANSPORT_OPTIONS it gets
	extLn   *net.TCPListener         // its own Extended ORPort
	cookie  []byte                   // that Extended ORPort's (cookieFile)
	orLn    *net.TCPListener         // its plain ORPort, which refuses
	sup     *supervisor
	err     error // why it could not start
	warned  atomic.Bool
	// public, when set, is the chain's public address that this child
	// listens on itself, as that chain's outermost hop; it serves that
	// slot alone.
	public *publicHop

	// stateDir is its TOR_PT_STATE_LOCATION, a name under the server's
	// state directory; copyOf, when set, the directory it starts as a copy
	// of (see stateDirs).
	stateDir, copyOf string
}

// addr is where the child's method listens now (it moves when the child
// is restarted).
func (c *serverChild) addr(method string) (*net.TCPAddr, error) {
	p, err := c.sup.Current()
	if err != nil {
		return nil, err
	}
	sm, ok := p.ServerMethods()[method]
	if !ok {
		return nil, fmt.Errorf("%s no longer offers %s", c.name(), method)
	}
	return sm.Addr, nil
}

func (c *serverChild) name() string { return filepath.Base(c.path) + "#" + strconv.Itoa(c.id) }

// publicHop is a chain's outermost hop whose PT listens on the chain's
// public address itself (Config.OutermostListens): an indirect PT's server
// (meek-server, snowflake-server, webtunnel's), which its CDN, proxies or
// web server reach there, or a direct PT an operator named with
// OuterListens. The server dials nothing into it: every connection it
// makes to its Extended ORPort is a new client connection of the chain,
// attributed with what it reports.
type publicHop struct {
	method string
	chain  *serverChain

	mu   sync.Mutex
	bind netip.AddrPort // its TOR_PT_SERVER_BINDADDR; a port 0 is pinned at the first start

	addr    *net.TCPAddr // where it listens (its SMETHOD), once the chain is open
	serving atomic.Bool  // the chain is open and not draining
}

// bindAddr is the address the child is told to listen on: the one tor gave,
// with the port it got the first time when that was 0, so that a restarted
// child listens where the published Bridge line says.
func (h *publicHop) bindAddr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bind.String()
}

// pin keeps the port p listens on for the next starts, if tor gave none.
func (h *publicHop) pin(p *ptproc.Process) {
	sm, ok := p.ServerMethods()[h.method]
	h.mu.Lock()
	defer h.mu.Unlock()
	if ok && h.bind.Port() == 0 {
		h.bind = netip.AddrPortFrom(h.bind.Addr(), uint16(sm.Addr.Port))
	}
}

// bindAddrPort is a, as TOR_PT_SERVER_BINDADDR names it: IPv4 unmapped, and
// 0.0.0.0 for no IP (every address, as net.ListenTCP reads it).
func bindAddrPort(a *net.TCPAddr) netip.AddrPort {
	ap := a.AddrPort()
	ip := ap.Addr().Unmap()
	if !ip.IsValid() {
		ip = netip.IPv4Unspecified()
	}
	return netip.AddrPortFrom(ip, ap.Port())
}

// hopEndpoint is what serves position i of a chain: an external program
// (child) or an in-process transport (inproc).
type hopEndpoint struct {
	method string
	child  *serverChild
	inproc *inprocHop
}

type serverChain struct {
	alias string
	hops  []hopEndpoint // innermost first
}

func (sc *serverChain) outermost() hopEndpoint { return sc.hops[len(sc.hops)-1] }

// NewServer prepares a server; Start launches it.
func NewServer(opt ServerOptions) *Server {
	if opt.Config == nil {
		opt.Config = &Config{}
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = DefaultStartTimeout
	}
	if opt.HandshakeTimeout <= 0 {
		opt.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opt.DialTimeout <= 0 {
		opt.DialTimeout = DefaultDialTimeout
	}
	if opt.StampWait <= 0 {
		opt.StampWait = DefaultStampWait
	}
	if opt.ArrivalTimeout <= 0 {
		opt.ArrivalTimeout = DefaultArrivalTimeout
	}
	if opt.ProxyHeaderTimeout <= 0 {
		opt.ProxyHeaderTimeout = DefaultProxyHeaderTimeout
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{opt: opt, log: log, ctx: ctx, cancel: cancel, stamps: newStampBook(),
		refusals: logLimit{burst: refusalBurst, period: refusalPeriod}}
	insts := opt.TorInstances
	if opt.TorExtORPort != "" {
		insts = append([]TorInstance{{ExtORPort: opt.TorExtORPort, CookiePath: opt.TorCookiePath}}, insts...)
	}
	if len(insts) > 0 {
		s.tor = newTorPool(log, insts)
	}
	return s
}

func sameArgs(a, b metadata.Args) bool {
	return metadata.EncodeClientArgs(a) == metadata.EncodeClientArgs(b)
}

// canServe reports whether a child with these options can serve method with
// opts too: a PT takes one option set per method.
func canServe(options map[string]metadata.Args, method string, opts metadata.Args) bool {
	have, ok := options[method]
	return !ok || sameArgs(have, opts)
}

// hopSlot is a slot with what serves it needs: the plugin, the options of
// the slot's method, and for an in-process hop its transport.
type hopSlot struct {
	slot
	plugin    int
	opts      metadata.Args
	transport transport.ServerTransport // nil: a child serves the slot
	// listen, when set, is the public address the slot's child listens on
	// itself (an outermost hop of Config.OutermostListens).
	listen *net.TCPAddr
}

// placeSlots gives every slot its child or in-process hop (see stateDirs):
// first the slots that have a state directory from an earlier run, so that
// they get it back, then the new ones.
func (s *Server) placeSlots(dirs *stateDirs, slots []hopSlot) []hopEndpoint {
	earlier := s.earlierDirs(dirs, slots)
	order := make([]int, len(slots))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return earlier[order[a]] != "" && earlier[order[b]] == "" })
	out := make([]hopEndpoint, len(slots))
	for _, i := range order {
		sl := slots[i]
		out[i] = hopEndpoint{method: sl.Method}
		if sl.transport != nil {
			out[i].inproc = s.inprocFor(sl, earlier[i], dirs)
			dirs.dirs[sl.slot] = out[i].inproc.stateDir
		} else {
			out[i].child = s.childFor(sl, earlier[i], dirs)
			dirs.dirs[sl.slot] = out[i].child.stateDir
		}
	}
	return out
}

// earlierDirs returns each slot's state directory from an earlier run, or
// "" for a new slot: the record's; for a slot the record lacks (no record
// yet, an upgrade, a slot not started since), a directory that no slot of
// the record claims and that is named after the slot, or else that the
// naming before the record gave the slot.
func (s *Server) earlierDirs(dirs *stateDirs, slots []hopSlot) []string {
	out := make([]string, len(slots))
	legacy := s.legacyDirs(slots)
	for i, sl := range slots {
		if d, ok := dirs.dirs[sl.slot]; ok {
			out[i] = d
			continue
		}
		for _, name := range []string{naturalDir(s.program(sl.plugin), sl.slot), legacy[i]} {
			if name != "" && !dirs.used(name) && exists(filepath.Join(s.opt.StateDir, name)) {
				out[i] = name
				break
			}
		}
	}
	return out
}

// legacyDirs names each slot's directory as versions before the record
// did: children were made in the order of the slots (tor's order of the
// transports, then the hops), a new one whenever no child of the program
// could serve the slot's method with its options. In-process hops came
// later: they have no such name ("").
func (s *Server) legacyDirs(slots []hopSlot) []string {
	type oldChild struct {
		plugin  int
		options map[string]metadata.Args
	}
	var children []*oldChild
	out := make([]string, len(slots))
	for i, sl := range slots {
		if sl.transport != nil {
			continue
		}
		id := -1
		for j, c := range children {
			if c.plugin == sl.plugin && canServe(c.options, sl.Method, sl.opts) {
				c.options[sl.Method] = sl.opts
				id = j
				break
			}
		}
		if id < 0 {
			id = len(children)
			children = append(children, &oldChild{plugin: sl.plugin, options: map[string]metadata.Args{sl.Method: sl.opts}})
		}
		out[i] = legacyDir(s.program(sl.plugin), sl.plugin, id)
	}
	return out
}

// program names what serves a plugin's methods in state directory names:
// the program, or "builtin" for the in-process transports.
func (s *Server) program(plugin int) string {
	p := s.opt.Config.Plugins[plugin]
	if p.Kind == BuiltinPlugin {
		return "builtin"
	}
	return filepath.Base(p.Path)
}

// childFor returns the child that serves sl. When sl has a state directory
// from an earlier run (dir), only a child keeping its state there, or in a
// copy of it, will do. A child serves one option set per method; when no
// child fits, childFor adds one: in dir, or in a copy of dir when another
// child holds it, or for a new slot in a new directory. A slot whose child
// listens on the public address itself gets a child of its own: the
// child's one listener for the method is that address.
func (s *Server) childFor(sl hopSlot, dir string, dirs *stateDirs) *serverChild {
	for _, c := range s.children {
		if sl.listen != nil {
			break
		}
		if c.public != nil || c.plugin != sl.plugin || (dir != "" && c.stateDir != dir && c.copyOf != dir) {
			continue
		}
		if canServe(c.options, sl.Method, sl.opts) {
			c.options[sl.Method] = sl.opts
			return c
		}
	}
	p := s.opt.Config.Plugins[sl.plugin]
	c := &serverChild{id: len(s.children), plugin: sl.plugin, path: p.Path, args: p.Args,
		options: map[string]metadata.Args{sl.Method: sl.opts}, stateDir: dir}
	if sl.listen != nil {
		c.public = &publicHop{method: sl.Method, bind: bindAddrPort(sl.listen)}
	}
	if dir == "" || s.holds(dir) {
		c.stateDir, c.copyOf = s.newStateDir(sl, dirs), dir
	}
	s.children = append(s.children, c)
	return c
}

// holds reports whether a child or an in-process hop keeps its state in
// dir.
func (s *Server) holds(dir string) bool {
	for _, c := range s.children {
		if c.stateDir == dir {
			return true
		}
	}
	for _, h := range s.inprocs {
		if h.stateDir == dir {
			return true
		}
	}
	return false
}

// newStateDir names a directory for sl that no child or in-process hop,
// no slot of the record and no file under the state directory has: naturalDir, else with
// a suffix ".2", ".3", ...
func (s *Server) newStateDir(sl hopSlot, dirs *stateDirs) string {
	base := naturalDir(s.program(sl.plugin), sl.slot)
	for n := 1; ; n++ {
		name := base
		if n > 1 {
			name += "." + strconv.Itoa(n)
		}
		if !s.holds(name) && !dirs.used(name) && !exists(filepath.Join(s.opt.StateDir, name)) {
			return name
		}
	}
}

// Start launches the children the binds need, in parallel, starts their
// in-process hops, and opens each chain's public listener. It returns one
// Published per Bind, in order.
func (s *Server) Start(ctx context.Context, binds []Bind) ([]Published, error) {
	if s.opt.StateDir == "" {
		return nil, errors.New("ServerOptions.StateDir is required: the hops keep their keys there (obfs4's cert)")
	}
	if err := os.MkdirAll(s.opt.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("the state directory: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("server is closed")
	}
	s.mu.Unlock()
	dirs, err := loadStateDirs(s.opt.StateDir)
	if err != nil {
		return nil, err
	}

	out := make([]Published, len(binds))
	plans := make([]*chainPlan, len(binds))
	clashes := sharedAddrs(binds)
	var slots []hopSlot
	s.mu.Lock()
	for i, b := range binds {
		out[i] = Published{Alias: b.Alias}
		if out[i].Err = clashes[i]; out[i].Err != nil {
			continue
		}
		if plans[i], out[i].Err = s.planChain(b); plans[i] != nil {
			plans[i].first = len(slots)
			slots = append(slots, plans[i].slots...)
		}
	}
	placed := s.placeSlots(dirs, slots)
	for i, p := range plans {
		if p != nil {
			p.chain = &serverChain{alias: binds[i].Alias, hops: placed[p.first : p.first+len(p.slots)]}
			if outer := p.chain.outermost(); outer.child != nil && outer.child.public != nil {
				outer.child.public.chain = p.chain
			}
		}
	}
	children := append([]*serverChild(nil), s.children...)
	inprocs := append([]*inprocHop(nil), s.inprocs...)
	s.mu.Unlock()
	err = s.prepareStateDirs(children, inprocs, dirs)
	dirs.release() // recorded: other servers sharing the directory may go on
	if err != nil {
		return nil, err
	}
	s.launchChildren(ctx, children)
	s.startInProcess(ctx, inprocs)
	for i, p := range plans {
		if p != nil {
			out[i] = s.openChain(binds[i], p)
		}
	}
	return out, nil
}

// chainPlan is one Bind's chain on its way to its listener: its slots,
// from its first one in Start's list of all, and the chain of what serves
// each.
type chainPlan struct {
	slots []hopSlot
	first int
	chain *serverChain
}

// sharedAddrs refuses every chain whose public address another chain of
// binds is given too (the same port, not 0, and the same IP or a wildcard
// on either side): one address has one listener, the server's or a PT's,
// and which chain should have it would be a guess.
func sharedAddrs(binds []Bind) []error {
	errs := make([]error, len(binds))
	for i, a := range binds {
		for j, b := range binds {
			if i == j || a.Addr == nil || b.Addr == nil || a.Addr.Port == 0 || a.Addr.Port != b.Addr.Port {
				continue
			}
			ai, bi := bindAddrPort(a.Addr).Addr(), bindAddrPort(b.Addr).Addr()
			if ai == bi || ai.IsUnspecified() || bi.IsUnspecified() {
				errs[i] = fmt.Errorf("chains %s and %s are both given %v (ServerTransportListenAddr): one address has one listener; give each chain its own", a.Alias, b.Alias, a.Addr)
				break
			}
		}
	}
	return errs
}

// planChain checks b's chain and returns its slots with their options.
func (s *Server) planChain(b Bind) (*chainPlan, error) {
	ch, ok := s.opt.Config.Lookup(b.Alias)
	if !ok {
		return nil, fmt.Errorf("no chain or method %q is configured", b.Alias)
	}
	if err := s.opt.Config.CheckChain(ch); err != nil {
		return nil, err
	}
	// An indirect PT's server (meek-server, snowflake-server) faces its
	// own front or proxies, so on the bridge too it can only be outermost.
	if err := s.opt.Config.CheckPlacementFor(ch, ServerRole); err != nil {
		return nil, err
	}
	opts := metadata.Args{}
	for k, v := range s.opt.Config.ServerOptions[b.Alias] {
		opts[k] = append(opts[k], v...)
	}
	for k, v := range b.Options {
		opts[k] = append(opts[k], v...)
	}
	perHop, err := metadata.SplitHops(opts, len(ch.Hops))
	if err != nil {
		return nil, fmt.Errorf("ServerTransportOptions: %w", err)
	}
	p := &chainPlan{}
	var errs []error
	for pos, m := range ch.Hops {
		sl := hopSlot{slot: slot{Alias: b.Alias, Hop: pos, Method: m}, plugin: s.pluginIndex(m), opts: perHop[pos]}
		if sl.transport, err = s.serverTransport(s.opt.Config.Plugins[sl.plugin], m); err != nil {
			errs = append(errs, fmt.Errorf("hop %d %q: %w", pos, m, err))
		}
		p.slots = append(p.slots, sl)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if s.opt.Config.OutermostListens(ch) {
		outer := &p.slots[len(p.slots)-1]
		if outer.transport != nil {
			return nil, fmt.Errorf("hop %d %q is in-process: it already runs on the server's own public listener, with no PT program to give the address to (OuterListens %s)", outer.Hop, outer.Method, b.Alias)
		}
		outer.listen = b.Addr
		if outer.listen == nil {
			outer.listen = &net.TCPAddr{}
		}
	}
	return p, nil
}

// openChain opens p's chain: its public listener, or, when its outermost
// hop listens itself, that hop's arrivals; unless a hop cannot serve.
func (s *Server) openChain(b Bind, p *chainPlan) Published {
	out := Published{Alias: b.Alias}
	sc := p.chain
	outer := sc.outermost()
	listens := outer.child != nil && outer.child.public != nil
	fail := func(pos int, err error) Published {
		out.Err = fmt.Errorf("hop %d (%s): %w", pos, sc.hops[pos].method, err)
		if listens && outer.child.sup != nil {
			// Nothing is to listen for a chain that is not served; the
			// child serves this chain alone.
			outer.child.sup.Close()
		}
		return out
	}
	perHop := make([]metadata.Args, len(sc.hops))
	for pos, hop := range sc.hops {
		args, err := hop.clientArgs()
		if err != nil {
			return fail(pos, err)
		}
		perHop[pos] = args
	}
	if listens {
		addr, err := outer.child.addr(outer.method)
		if err != nil {
			return fail(len(sc.hops)-1, err)
		}
		pub := outer.child.public
		pub.mu.Lock()
		pub.addr = addr
		pub.mu.Unlock()
		pub.serving.Store(true)
		out.Addr, out.Args = addr, metadata.JoinHops(perHop)
		s.log.Info("the chain's outermost hop listens on the public address itself", "chain", sc.alias,
			"hop", len(sc.hops)-1, "method", outer.method, "child", outer.child.name())
		return out
	}
	ln, err := net.ListenTCP("tcp", b.Addr)
	if err != nil {
		out.Err = fmt.Errorf("cannot listen on %v: %w", b.Addr, err)
		return out
	}
	out.Addr = ln.Addr().(*net.TCPAddr)
	out.Args = metadata.JoinHops(perHop)
	s.serve(ln, func(conn *net.TCPConn) { s.handlePublic(sc, conn) })
	return out
}

// clientArgs are the arguments a client needs for the hop (SMETHOD ARGS),
// or why the hop cannot serve.
func (h hopEndpoint) clientArgs() (metadata.Args, error) {
	if h.inproc != nil {
		if h.inproc.err != nil {
			return nil, h.inproc.err
		}
		return h.inproc.srv.ClientArgs(), nil
	}
	c := h.child
	if c.err != nil {
		return nil, c.err
	}
	proc, err := c.sup.Current()
	if err != nil {
		return nil, err
	}
	sm, ok := proc.ServerMethods()[h.method]
	if !ok {
		why := "the program does not offer it"
		if e, ok := proc.MethodErrors()[h.method]; ok {
			why = "the program says: " + e
		}
		return nil, errors.New(why)
	}
	return sm.Args, nil
}

// prepareStateDirs makes the copies new children and in-process hops start
// from and records every slot's directory, before any of them runs: a child
// that fails to start may already have written keys there.
func (s *Server) prepareStateDirs(children []*serverChild, inprocs []*inprocHop, dirs *stateDirs) error {
	for _, c := range children {
		if c.sup == nil && c.err == nil {
			c.err = s.copyStateDir(c.path, c.copyOf, c.stateDir)
		}
	}
	for _, h := range inprocs {
		if h.srv == nil && h.err == nil {
			h.err = s.copyStateDir("builtin "+h.Method, h.copyOf, h.stateDir)
		}
	}
	return dirs.save()
}

// copyStateDir makes dir a copy of from, a directory another hop keeps
// its state in, unless dir exists already or there is nothing to copy.
func (s *Server) copyStateDir(who, from, dir string) error {
	if from == "" || exists(filepath.Join(s.opt.StateDir, dir)) {
		return nil
	}
	if err := copyStateDir(filepath.Join(s.opt.StateDir, from), filepath.Join(s.opt.StateDir, dir)); err != nil {
		return err
	}
	s.log.Info("a chain position's options now differ from those it shared its state with: it starts from a copy of that state, so it keeps its keys",
		"hop", who, "from", from, "to", dir)
	return nil
}

// launchChildren starts, in parallel, the children that have not started
// (nor failed) yet.
func (s *Server) launchChildren(ctx context.Context, children []*serverChild) {
	var fresh []*serverChild
	for _, c := range children {
		if c.sup == nil && c.err == nil {
			fresh = append(fresh, c)
		}
	}
	var wg sync.WaitGroup
	for _, c := range fresh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.err = s.launch(ctx, c)
		}()
	}
	wg.Wait()
}

func (s *Server) pluginIndex(method string) int {
	for i, p := range s.opt.Config.Plugins {
		for _, m := range p.Methods {
			if m == method {
				return i
			}
		}
	}
	return -1 // CheckChain ran before
}

// cookieFile is where the child's Extended ORPort cookie is kept: one per
// child, named after its state directory, so that the servers of several
// ServerTransportPlugin lines, which share tor's pt_state, never overwrite
// each other's.
func (s *Server) cookieFile(c *serverChild) string {
	return filepath.Join(s.opt.StateDir, "extended_orport_auth_cookie."+c.stateDir)
}

// launch opens the child's ORPorts (listenORPorts) and starts it under a
// supervisor, pointed at them.
func (s *Server) launch(ctx context.Context, c *serverChild) error {
	if err := s.listenORPorts(c); err != nil {
		return err
	}
	spec := s.childSpec(c)
	sup := &supervisor{
		name: c.path,
		life: s.ctx, // the child lives as long as the server
		log:  s.log,
		start: func(ctx context.Context) (*ptproc.Process, error) {
			spec := spec
			if c.public != nil {
				spec.BindAddrs = map[string]string{c.public.method: c.public.bindAddr()}
			}
			s.restoreStateLogged(c.name(), spec.StateDir) // at every start: each rewrites the state
			p, err := ptproc.Start(ctx, spec)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.path, err)
			}
			s.keepStateLogged(c.name(), spec.StateDir)
			if c.public != nil {
				c.public.pin(p)
			}
			s.log.Info("PT program started", "program", c.path, "pid", p.Pid(), "methods", spec.Methods)
			return p, nil
		},
		onEvent: s.opt.OnEvent,
		observe: childObserver(s.opt.Observer, filepath.Base(c.path), c.name()),
	}
	// Known to Close before it starts, so that Close stops it; and never
	// set once Close has begun, which reads c.sup without the lock.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("server is closed")
	}
	c.sup = sup
	s.mu.Unlock()
	_, err := sup.Start(ctx, &s.sups) // ctx, or Close, aborts a hanging start
	return err
}

// listenORPorts writes the child's cookie, opens its own Extended ORPort
// and plain ORPort on loopback and serves them until the server closes.
func (s *Server) listenORPorts(c *serverChild) error {
	cookie, err := extorport.WriteCookieFile(s.cookieFile(c))
	if err != nil {
		return fmt.Errorf("writing the Extended ORPort cookie: %w", err)
	}
	c.cookie = cookie
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	ext, err := loopback.ListenTCP(loop)
	if err != nil {
		return fmt.Errorf("Extended ORPort listener: %w", err)
	}
	or, err := loopback.ListenTCP(loop)
	if err != nil {
		ext.Close()
		return fmt.Errorf("ORPort listener: %w", err)
	}
	c.extLn, c.orLn = ext, or
	s.serve(ext, func(conn *net.TCPConn) { s.handleExt(c, conn) })
	s.serve(or, func(conn *net.TCPConn) { s.handlePlainOR(c, conn) })
	return nil
}

// childSpec is what the child starts with: the methods it serves, in its
// plugin's order, their options (TOR_PT_SERVER_TRANSPORT_OPTIONS), its
// state directory, and its own ORPorts.
func (s *Server) childSpec(c *serverChild) ptproc.Spec {
	var methods []string
	for _, m := range s.opt.Config.Plugins[c.plugin].Methods {
		if _, ok := c.options[m]; ok {
			methods = append(methods, m)
		}
	}
	opts := map[string]metadata.Args{}
	for m, a := range c.options {
		if len(a) > 0 {
			opts[m] = a
		}
	}
	name := filepath.Base(c.path)
	spec := ptproc.Spec{
		Name:           name,
		Path:           c.path,
		Args:           c.args,
		Role:           ptproc.Server,
		Methods:        methods,
		StateDir:       filepath.Join(s.opt.StateDir, c.stateDir),
		Options:        opts,
		ORPort:         c.orLn.Addr().String(),
		ExtORPort:      c.extLn.Addr().String(),
		AuthCookieFile: s.cookieFile(c),
		StartTimeout:   s.opt.StartTimeout,
		Logger:         s.log,
	}
	if s.opt.OnChildLog != nil {
		spec.OnLog = func(sev ptproc.Severity, msg string) { s.opt.OnChildLog(name, sev, msg) }
	}
	return spec
}

// serve runs an accept loop on ln, each connection in its own goroutine,
// until the server closes.
func (s *Server) serve(ln *net.TCPListener, handle func(*net.TCPConn)) {
	s.mu.Lock()
	s.listeners = append(s.listeners, ln)
	closed := s.closed
	s.mu.Unlock()
	if closed {
		ln.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := ln.AcceptTCP()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				s.log.Warn("accept", "addr", ln.Addr().String(), "err", err)
				select {
				case <-s.ctx.Done():
					return
				case <-time.After(50 * time.Millisecond): // EMFILE and the like: do not spin
				}
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				// Closing the server closes connections still in a handshake.
				stop := context.AfterFunc(s.ctx, func() { conn.Close() })
				defer stop()
				handle(conn)
			}()
		}
	}()
}

// serverConn is one client's connection through a chain.
type serverConn struct {
	id    uint64
	chain *serverChain
	// client is the real client's ip:port, as tor must learn it; from an
	// outermost hop that listens itself, what it reported ("" for none).
	client string

	// public is the client's connection, closed when a hop never reports;
	// from an outermost hop that listens itself, its Extended ORPort
	// connection (closing it ends the client's session there).
	public *net.TCPConn
	watch  connWatch // for the Observer

	// tor is the stream towards tor, begun once the walk reached the
	// innermost hop (nil before, or when it goes elsewhere).
	tor *torLeg
}

// handlePublic takes a client's connection on a chain's public listener and
// starts its walk inward at the outermost hop.
func (s *Server) handlePublic(sc *serverChain, conn *net.TCPConn) {
	release, ok := s.admit()
	if !ok {
		s.capped(sc.alias)
		conn.Close()
		return
	}
	defer release()
	client, ok := s.clientAddr(conn, sc.alias) // a PROXY header's, behind a load balancer
	if !ok {
		return
	}
	c := &serverConn{id: s.nextID.Add(1), chain: sc, client: client, public: conn}
	defer s.watchConn(c)()
	s.next(c, len(sc.hops)-1, conn)
}

// admit counts a new client connection, for MaxConns and for the drain, or
// refuses it above the cap (warning once). release ends the count.
func (s *Server) admit() (release func(), ok bool) {
	if s.opt.MaxConns > 0 {
		if n := s.open.Add(1); n > int64(s.opt.MaxConns) {
			s.open.Add(-1)
			if s.capWarn.CompareAndSwap(false, true) {
				s.log.Warn("connection cap reached: closing new client connections", "max_conns", s.opt.MaxConns)
			}
			return nil, false
		}
	}
	s.active.Add(1)
	return func() {
		s.active.Done()
		if s.opt.MaxConns > 0 {
			s.open.Add(-1)
		}
	}, true
}

// arrive takes an Extended ORPort connection from a child that listens on
// its chain's public address itself: a client connection it accepted (for
// meek, a session; for snowflake, a client's session through its proxies)
// and decoded. It starts a chain connection there, attributed with what the
// child reports: its USERADDR goes to tor unchanged (meek-server's is the
// client's IP with port 1, from its front's X-Forwarded-For; snowflake's
// is the IP its proxy reported, or none), and none when it sent none. The
// walk goes on inward from the next hop, stamped as ever.
func (s *Server) arrive(child *serverChild, meta extorport.Meta, conn *net.TCPConn) {
	pub := child.public
	refuse := func(why string) {
		s.refusals.warn(s.log, "refused an Extended ORPort connection: "+why, "child", child.name(), "chain", pub.chain.alias,
			"useraddr", meta.UserAddr, "transport", meta.Transport)
		s.extOR(PeerChild, ExtDenied)
		extorport.Deny(conn)
		conn.Close()
	}
	switch {
	case meta.Transport != "" && meta.Transport != pub.method:
		refuse("the child listens on the chain's public address for " + pub.method + " and reported another TRANSPORT")
		return
	case !pub.serving.Load():
		refuse("the chain is not served (a hop could not start, or the server drains)")
		return
	}
	release, ok := s.admit()
	if !ok {
		s.extOR(PeerChild, ExtDenied)
		s.capped(pub.chain.alias)
		extorport.Deny(conn) // the child ends that client's session
		conn.Close()
		return
	}
	defer release()
	c := &serverConn{id: s.nextID.Add(1), chain: pub.chain, client: meta.UserAddr, public: conn}
	defer s.watchConn(c)()
	if err := extorport.Okay(conn); err != nil {
		s.extOR(PeerChild, ExtFailed)
		s.log.Warn("child went away before OKAY", "chain", c.chain.alias, "hop", len(c.chain.hops)-1, "child", child.name(), "err", err)
		conn.Close()
		return
	}
	s.extOR(PeerChild, ExtOK)
	s.next(c, len(c.chain.hops)-2, conn)
}

// next carries a client's stream inward from position pos, and is the one
// function that says which hop comes next. conn carries hop pos's protocol
// (for the outermost hop, the client's connection itself); below hop 0 it
// carries the application's bytes, which go to tor. An in-process hop
// unwraps conn here and the walk goes on; an external child gets conn
// through forward, and the walk goes on where the child hands the stream
// back (handleExt).
func (s *Server) next(c *serverConn, pos int, conn net.Conn) {
	for ; pos >= 0; pos-- {
		if pos == 0 && c.tor == nil {
			// tor's leg overlaps the innermost hop's handshake; this
			// goroutine carries the hop (or goes on to toTor) until the
			// connection ends, and closes the leg if it was never taken.
			s.newTorLeg(c)
			if c.tor != nil {
				defer c.tor.abandon()
			}
		}
		if c.chain.hops[pos].child != nil {
			s.forward(c, pos, conn)
			return
		}
		if pos == 0 && c.tor != nil {
			c.tor.begin()
		}
		var ok bool
		if conn, ok = s.unwrap(c, pos, conn); !ok {
			return
		}
	}
	s.toTor(c, conn)
}

// unwrap runs position pos's in-process server on conn and returns the
// stream inside it. When it fails, the client's connection is closed too:
// a child outside might only half-close it (the transport's close may reach
// the child as a reset, with the client's bytes unread) and leave the
// client waiting.
func (s *Server) unwrap(c *serverConn, pos int, conn net.Conn) (net.Conn, bool) {
	hop := c.chain.hops[pos]
	s.reached(c, pos)
	ctx, cancel := context.WithTimeout(s.ctx, s.opt.ArrivalTimeout)
	defer cancel()
	inner, err := hop.inproc.srv.WrapConn(ctx, conn) // on error it closed conn
	if err != nil {
		s.failed(c, pos, handshakeReason(err))
		// A prober, or a client that gave up: the transport answered as
		// its own program would have.
		s.log.Debug("an in-process hop's handshake failed", "chain", c.chain.alias, "hop", pos, "method", hop.method, "err", err)
		c.public.Close()
		return nil, false
	}
	return inner, true
}

// forward dials position pos's child, records the stamp of that connection
// and pipes up into it; when it cannot, it closes up.
func (s *Server) forward(c *serverConn, pos int, up net.Conn) {
	hop := c.chain.hops[pos]
	s.reached(c, pos)
	addr, err := hop.child.addr(hop.method)
	if err != nil {
		s.failed(c, pos, ReasonDown)
		s.log.Warn("a hop's server is down", "chain", c.chain.alias, "hop", pos, "method", hop.method, "err", err)
		up.Close()
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opt.DialTimeout)
	raw, err := loopback.Dialer(addr.String()).DialContext(ctx, "tcp", addr.String())
	cancel()
	if err != nil {
		s.failed(c, pos, reasonOf(err))
		s.log.Warn("cannot reach a hop's server", "chain", c.chain.alias, "hop", pos, "method", hop.method, "err", err)
		up.Close()
		return
	}
	down := raw.(*net.TCPConn)
	local, err := netip.ParseAddrPort(down.LocalAddr().String())
	if err != nil {
		s.log.Error("dialled socket has no ip:port", "err", err)
		up.Close()
		down.Close()
		return
	}
	st := stamp{child: hop.child.id, method: hop.method, addr: local}
	if err := s.stamps.Put(st, hopLink{conn: c, pos: pos}); err != nil {
		s.failed(c, pos, ReasonOther)
		s.log.Error("stamp collision: refusing the connection rather than guessing", "stamp", local.String(), "err", err)
		up.Close()
		down.Close()
		return
	}
	defer s.stamps.Drop(st)
	arrival := time.AfterFunc(s.opt.ArrivalTimeout, func() { s.neverArrived(c, pos, st, up, down) })
	defer arrival.Stop()
	var sent shim.Progress
	if pos == 0 && c.tor != nil {
		sent = func(int64) { c.tor.begin() } // the client's first bytes are in the innermost child
	}
	shim.PipeProgress(s.ctx, up, down, sent, nil)
}

// neverArrived ends a chain connection whose dial into position pos's child
// the child did not report on its Extended ORPort within ArrivalTimeout
// (it froze, or hangs in a handshake longer than any PT should), unless the
// report came meanwhile.
func (s *Server) neverArrived(c *serverConn, pos int, st stamp, up net.Conn, down *net.TCPConn) {
	if !s.stamps.Expire(st, hopLink{conn: c, pos: pos}) {
		return
	}
	hop := c.chain.hops[pos]
	s.failed(c, pos, ReasonTimeout)
	s.log.Warn("a hop's server never reported a connection on its Extended ORPort: closing the client's connection",
		"chain", c.chain.alias, "hop", pos, "method", hop.method, "child", hop.child.name(), "pid", hop.child.sup.Pid(),
		"waited", s.opt.ArrivalTimeout)
	up.Close()
	down.Close()
	c.public.Close()
}

// handleExt takes a child's connection on its Extended ORPort: it checks the
// cookie, reads USERADDR and TRANSPORT, looks the stamp up, and sends the
// stream on inward from the next hop (next). A child that listens on the
// public address itself has no stamps: its arrivals start connections
// (arrive).
func (s *Server) handleExt(child *serverChild, conn *net.TCPConn) {
	meta, err := extorport.ServerHandshake(conn, extorport.ServerConfig{Cookie: child.cookie, Timeout: s.opt.HandshakeTimeout})
	if err != nil {
		s.extOR(PeerChild, ExtFailed)
		s.refusals.warn(s.log, "refused an Extended ORPort connection", "child", child.name(), "err", err)
		conn.Close()
		return
	}
	if child.public != nil {
		s.arrive(child, meta, conn)
		return
	}
	addr, err := netip.ParseAddrPort(meta.UserAddr)
	if err != nil {
		s.extOR(PeerChild, ExtUnmatched)
		s.refusals.warn(s.log, "refused an Extended ORPort connection without a usable USERADDR", "child", child.name(), "useraddr", meta.UserAddr, "err", err)
		extorport.Deny(conn)
		conn.Close()
		return
	}
	var link hopLink
	var ok bool
	if meta.Transport == "" {
		link, ok = s.stamps.TakeAnyMethod(child.id, addr)
	} else {
		link, ok = s.stamps.Take(stamp{child: child.id, method: meta.Transport, addr: addr}, s.opt.StampWait)
	}
	if !ok {
		s.extOR(PeerChild, ExtUnmatched)
		s.refusals.warn(s.log, "refused an Extended ORPort connection: ptcombiner dialled no such connection into this child",
			"child", child.name(), "useraddr", meta.UserAddr, "transport", meta.Transport)
		extorport.Deny(conn)
		conn.Close()
		return
	}
	c, pos := link.conn, link.pos
	// OKAY at once, as tor does: goptlib's DialOr gives the whole Extended
	// ORPort exchange 5 s (extOrPortSetup), so an OKAY that waited for the
	// next hop's dial or tor's handshake made a loaded bridge's children drop
	// streams already set up through every hop, silently. The child's bytes
	// wait in the socket until the next leg is up; a failure there closes
	// the connection, with the warning that says why.
	if err := extorport.Okay(conn); err != nil {
		s.extOR(PeerChild, ExtFailed)
		s.failed(c, pos, ReasonClosed)
		s.log.Warn("child went away before OKAY", "chain", c.chain.alias, "hop", pos, "child", child.name(), "err", err)
		conn.Close()
		return
	}
	s.extOR(PeerChild, ExtOK)
	s.next(c, pos-1, conn)
}

// toTor hands the application's stream, conn, to tor (or the --forward
// service, or ServerOptions.Streams).
func (s *Server) toTor(c *serverConn, conn net.Conn) {
	if s.opt.Streams != nil {
		// The stream is established once it is handed over; its bytes are
		// counted as they pass, as they are towards tor.
		s.established(c)
		s.opt.Streams(s.ctx, s.counted(c, conn), c.chain.alias, c.client)
		return
	}
	var tor *net.TCPConn
	var release func()
	var err error
	if c.tor != nil {
		tor, release, err = c.tor.take()
	} else {
		tor, release, err = s.dialTor(c)
	}
	if err != nil {
		s.torFailed(c, err)
		msg := "cannot reach tor (or the --forward service)"
		if errors.As(err, new(*extorport.CookieFileError)) { // tor may rewrite it at any time
			msg = torCookieInvalid + ": closing the client's connection"
		}
		s.log.Warn(msg, "chain", c.chain.alias, "err", err)
		conn.Close()
		return
	}
	defer release()
	s.torReached(c)
	shim.PipeProgress(s.ctx, conn, tor, s.progress(c, true), s.progress(c, false))
}

// torCookieInvalid heads every report of a TOR_PT_AUTH_COOKIE_FILE that
// cannot be used.
const torCookieInvalid = "tor's Extended ORPort cookie is invalid"

// CheckTorCookie reads tor's Extended ORPort cookie file (TOR_PT_AUTH_COOKIE_FILE)
// as every connection to tor will, so that a bad one can be reported at start
// rather than at each client's connection (where it is checked again).
func CheckTorCookie(path string) error {
	if _, err := extorport.ReadCookieFile(path); err != nil {
		return fmt.Errorf("%s: %w", torCookieInvalid, err)
	}
	return nil
}

// dialTor opens the finished stream towards tor: an Extended ORPort (of
// one of the tor instances) with the real client address and the alias,
// or its plain ORPort. release is called when the stream has closed.
func (s *Server) dialTor(c *serverConn) (conn *net.TCPConn, release func(), err error) {
	if s.tor != nil {
		return s.tor.dial(s.ctx, s.opt.DialTimeout, s.opt.HandshakeTimeout,
			extorport.Meta{UserAddr: c.client, Transport: c.chain.alias})
	}
	if s.opt.TorORPort == "" {
		return nil, nil, errors.New("tor gave neither an Extended ORPort nor an ORPort")
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opt.DialTimeout)
	defer cancel()
	raw, err := loopback.Dialer(s.opt.TorORPort).DialContext(ctx, "tcp", s.opt.TorORPort)
	if err != nil {
		return nil, nil, err
	}
	return raw.(*net.TCPConn), func() {}, nil
}

// handlePlainOR refuses a child's connection to the plain ORPort: it carries
// no USERADDR, so it cannot be tied to its client, and ptcombiner never
// guesses (the historical combiner matched by order, and raced).
func (s *Server) handlePlainOR(child *serverChild, conn *net.TCPConn) {
	conn.Close()
	if !child.warned.Swap(true) {
		s.log.Error("a connection to the plain ORPort was refused: a PT that does not speak the Extended ORPort sends its clients there, and ptcombiner cannot tell which client such a connection belongs to; use a PT that supports TOR_PT_EXTENDED_SERVER_PORT (every goptlib-based PT does). Only once per child; if this PT does speak it, another local program connected to that port",
			"child", child.name())
	}
}

// Close ends every connection, listener and child, and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	listeners := s.listeners
	children := s.children
	inprocs := s.inprocs
	s.mu.Unlock()
	s.cancel()
	for _, ln := range listeners {
		ln.Close()
	}
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, c := range children {
		if c.sup == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.sup.Close(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", c.name(), err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	s.sups.Wait()
	s.wg.Wait()
	for _, h := range inprocs {
		if h.srv != nil {
			if err := h.srv.Close(); err != nil {
				errs = append(errs, fmt.Errorf("builtin %s: %w", h.Method, err))
			}
		}
	}
	return errors.Join(errs...)
}

// CloseListeners stops accepting new client connections (the first SIGINT);
// open connections go on. A chain whose outermost PT listens itself keeps
// that PT's listener (it is the PT's), and its new arrivals are refused.
func (s *Server) CloseListeners(public []*net.TCPAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ln := range s.listeners {
		for _, a := range public {
			if ln.Addr().String() == a.String() {
				ln.Close()
			}
		}
	}
	for _, c := range s.children {
		if c.public == nil {
			continue
		}
		c.public.mu.Lock()
		addr := c.public.addr
		c.public.mu.Unlock()
		for _, a := range public {
			if addr != nil && addr.String() == a.String() {
				c.public.serving.Store(false)
			}
		}
	}
}

// Drained is closed when no client connection is open any more; call it
// after CloseListeners.
func (s *Server) Drained() <-chan struct{} {
	ch := make(chan struct{})
	go func() { s.active.Wait(); close(ch) }()
	return ch
}

// Processes returns the pids of the running children.
func (s *Server) Processes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pids []int
	for _, c := range s.children {
		if c.sup != nil {
			if pid := c.sup.Pid(); pid != 0 {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// PendingStamps is the number of dialled connections whose child has not
// come back yet (for tests and stats).
func (s *Server) PendingStamps() int { return s.stamps.Len() }
