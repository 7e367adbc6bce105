package chain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
	"github.com/ptcombiner/ptcombiner/transport"
)

// Defaults for ClientOptions' zero values.
const (
	DefaultSetupTimeout = 60 * time.Second
	DefaultStartTimeout = 30 * time.Second
	DefaultLinger       = 10 * time.Second
	shimListenAddr      = "127.0.0.1:0"
)

// ClientOptions configure a Client. The zero value of every field but
// Config and StateDir has a documented default.
type ClientOptions struct {
	Config *Config
	// StateDir holds each child's state (StateDir/<program>-<n>/) and the
	// in-process transports' (StateDir/builtin/: scramblesuit's tickets).
	StateDir string
	// ProxyURL is tor's TOR_PT_PROXY; it is given to the programs that serve
	// the outermost hop of a chain, and only to them; an in-process
	// outermost hop dials through it (socks5, socks4a or http).
	ProxyURL string
	Logger   *slog.Logger // nil: slog.Default()
	// SetupTimeout bounds a whole chained connection's setup: every SOCKS
	// handshake, every shim's accept and every in-process handshake. 0:
	// DefaultSetupTimeout.
	SetupTimeout time.Duration
	// StartTimeout bounds a child's start, up to its CMETHODS DONE, and
	// the check that an unmanaged PT's SOCKS port answers.
	StartTimeout time.Duration
	// Linger bounds how long inner hops may drain after the application's
	// side of a connection has closed. 0: DefaultLinger.
	Linger time.Duration
	// OnChildLog, when set, receives every child's LOG lines (sanitised).
	OnChildLog func(program string, severity ptproc.Severity, message string)
	// OnEvent, when set, hears when a child exits and is restarted.
	OnEvent func(Event)
	// Observer, when set, hears every connection and child event, for
	// metrics; nil costs nothing.
	Observer Observer
}

// Client runs chains on the client side. Its methods are safe for
// concurrent use.
type Client struct {
	opt ClientOptions
	log *slog.Logger
	// shimsTaken limits the warnings of shims taken by other connections.
	shimsTaken *logLimit

	ctx    context.Context // ends every connection when cancelled
	cancel context.CancelFunc
	conns  sync.WaitGroup // every setup and every pipe of every chained connection
	sups   sync.WaitGroup // the children's supervisors

	mu       sync.Mutex
	procs    map[procKey]*procSlot
	builtins map[string]builtinHop // by method, started on first use
	open     map[*Conn]struct{}    // established connections, closed by Close
	closed   bool
}

// procKey names one child: a program, and whether it is the instance that
// carries the upstream proxy (outermost hops only).
type procKey struct {
	plugin int
	outer  bool
}

type procSlot struct {
	key     procKey
	plugin  Plugin
	methods []string
	sup     *supervisor
}

// builtinHop is an in-process method, started, or why it cannot start.
type builtinHop struct {
	dialer transport.Dialer
	err    error
}

// NewClient returns a Client; no child runs until Start or Dial.
func NewClient(opt ClientOptions) *Client {
	if opt.Config == nil {
		opt.Config = &Config{}
	}
	if opt.SetupTimeout <= 0 {
		opt.SetupTimeout = DefaultSetupTimeout
	}
	if opt.StartTimeout <= 0 {
		opt.StartTimeout = DefaultStartTimeout
	}
	if opt.Linger <= 0 {
		opt.Linger = DefaultLinger
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{opt: opt, log: log, shimsTaken: &logLimit{burst: refusalBurst, period: refusalPeriod},
		ctx: ctx, cancel: cancel, procs: map[procKey]*procSlot{},
		builtins: map[string]builtinHop{}, open: map[*Conn]struct{}{}}
}

// hopKey returns the child that serves position i of ch; outermost says
// whether the position is on the network (no hop outside it).
func (c *Client) hopKey(ch Chain, i int, outermost bool) (procKey, error) {
	for idx, p := range c.opt.Config.Plugins {
		if p.Kind == ExecPlugin && contains(p.Methods, ch.Hops[i]) {
			return procKey{plugin: idx, outer: c.opt.ProxyURL != "" && outermost && i == len(ch.Hops)-1}, nil
		}
	}
	return procKey{}, fmt.Errorf("method %q is offered by no program", ch.Hops[i])
}

// Start launches, in parallel, every program the named chains need, each
// once, with every method name they need from it, starts their in-process
// methods and checks that their unmanaged PTs answer. It returns, per
// name, nil when the chain is ready, or why it cannot start. Names that
// are no alias nor method are left out of the result: tor asks for every
// transport of the torrc line, and unknown ones are ignored silently
// (pt-spec 3.2.2).
func (c *Client) Start(ctx context.Context, names []string) map[string]error {
	result := map[string]error{}
	chains := map[string]Chain{}
	need := map[procKey]map[string]bool{}
	unmanaged := map[string]bool{} // SOCKS addresses
	for _, name := range names {
		ch, ok := c.opt.Config.Lookup(name)
		if !ok {
			continue
		}
		if err := c.check(ch); err != nil {
			result[name] = err // refused before anything starts for it
			continue
		}
		chains[name] = ch
		for i, m := range ch.Hops {
			switch p, _ := c.opt.Config.PluginFor(m); p.Kind { // check found it
			case ExecPlugin:
				key, _ := c.hopKey(ch, i, true)
				if need[key] == nil {
					need[key] = map[string]bool{}
				}
				need[key][m] = true
			case SOCKSPlugin:
				unmanaged[p.Addr] = true
			}
		}
	}
	c.reserve(need)
	reach := c.startAll(ctx, need, unmanaged)
	for name, ch := range chains {
		result[name] = c.ready(ctx, ch, reach)
	}
	return result
}

// check reports why ch cannot run at all: an indirect PT placed inside,
// a hop no plugin offers, an outermost hop tor's proxy cannot reach.
func (c *Client) check(ch Chain) error {
	if err := c.opt.Config.CheckPlacement(ch); err != nil {
		return err
	}
	if err := c.opt.Config.CheckChainFor(ch, ClientRole); err != nil {
		return err
	}
	if c.opt.ProxyURL == "" {
		return nil
	}
	last := len(ch.Hops) - 1
	switch p, _ := c.opt.Config.PluginFor(ch.Hops[last]); p.Kind {
	case SOCKSPlugin:
		return fmt.Errorf("hop %d %q is an unmanaged PT (%s): it reaches the network its own way, so tor's proxy cannot be applied to it; as the outermost hop it would bypass the proxy (%s)",
			last, ch.Hops[last], p.describe(), p.Source)
	case BuiltinPlugin:
		if _, err := upstream(c.opt.ProxyURL); err != nil {
			return fmt.Errorf("hop %d %q (in-process): %w", last, ch.Hops[last], err)
		}
	}
	return nil
}

// reserve makes a slot for every child need names, with the methods asked
// of it in the order of its plugin line.
func (c *Client) reserve(need map[procKey]map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, methods := range need {
		slot := c.procs[key]
		if slot == nil {
			slot = &procSlot{key: key, plugin: c.opt.Config.Plugins[key.plugin]}
			c.procs[key] = slot
		}
		for _, m := range slot.plugin.Methods { // keep the torrc line's order
			if methods[m] && !contains(slot.methods, m) {
				slot.methods = append(slot.methods, m)
			}
		}
	}
}

// startAll starts the children of need and checks the unmanaged PTs'
// SOCKS ports, all in parallel. A child records its own error in its
// slot; an unreachable PT's error is returned by address.
func (c *Client) startAll(ctx context.Context, need map[procKey]map[string]bool, unmanaged map[string]bool) map[string]error {
	var mu sync.Mutex
	reach := map[string]error{}
	var wg sync.WaitGroup
	for key := range need {
		wg.Go(func() { c.process(ctx, key) })
	}
	for addr := range unmanaged {
		wg.Go(func() {
			err := c.reachable(ctx, addr)
			mu.Lock()
			reach[addr] = err
			mu.Unlock()
		})
	}
	wg.Wait()
	return reach
}

// reachable checks that an unmanaged PT's SOCKS port accepts a TCP
// connection, within StartTimeout.
func (c *Client) reachable(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.opt.StartTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// ready reports why a chain that passed check cannot run now: a child
// that did not start, an in-process method that does not exist, an
// unmanaged PT that did not answer (reach, by address).
func (c *Client) ready(ctx context.Context, ch Chain, reach map[string]error) error {
	for i, m := range ch.Hops {
		p, _ := c.opt.Config.PluginFor(m)
		switch p.Kind {
		case BuiltinPlugin:
			if _, err := c.builtin(m); err != nil {
				return fmt.Errorf("hop %d %q (in-process): %w", i, m, err)
			}
		case SOCKSPlugin:
			if err := reach[p.Addr]; err != nil {
				return fmt.Errorf("hop %d %q: the unmanaged PT at %s (%s) does not answer: %w", i, m, p.Addr, p.Source, err)
			}
		default:
			key, _ := c.hopKey(ch, i, true)
			if _, _, err := c.endpoint(ctx, key, m, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// hop returns the dialer that serves position i of ch, starting what it
// needs; outermost says whether the position is on the network.
func (c *Client) hop(ctx context.Context, ch Chain, i int, outermost bool) (hop, error) {
	m := ch.Hops[i]
	p, ok := c.opt.Config.PluginFor(m)
	if !ok {
		return hop{}, fmt.Errorf("method %q is offered by no program", m)
	}
	switch p.Kind {
	case BuiltinPlugin:
		d, err := c.builtin(m)
		return hop{Dialer: d, method: m, program: "in-process"}, err
	case SOCKSPlugin:
		return hop{Dialer: c.ptHop(p.Addr, 0), method: m, program: "unmanaged PT", pt: true}, nil
	}
	key, err := c.hopKey(ch, i, outermost)
	if err != nil {
		return hop{}, err
	}
	addr, pid, err := c.endpoint(ctx, key, m, true)
	if err != nil {
		return hop{}, err
	}
	return hop{Dialer: c.ptHop(addr.String(), pid), method: m, program: p.Path, pt: true}, nil
}

// ptHop is the dialer of a PT at proxy, run as process pid (0: unmanaged).
func (c *Client) ptHop(proxy string, pid int) ptHop {
	return ptHop{proxy: proxy, life: c.ctx, pipes: &c.conns, linger: c.opt.Linger, log: c.log, pid: pid, warnings: c.shimsTaken}
}

// builtin returns the dialer of an in-process method, starting it the
// first time (scramblesuit keeps its tickets in StateDir/builtin).
func (c *Client) builtin(method string) (transport.Dialer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.builtins[method]
	if !ok {
		var started transport.Client
		started, b.err = transport.BuiltinClient().Start(c.ctx, transport.ClientConfig{
			Methods: []string{method}, StateDir: filepath.Join(c.opt.StateDir, "builtin")})
		if b.err == nil {
			b.dialer = started.Dialers()[method]
		}
		c.builtins[method] = b
	}
	return b.dialer, b.err
}

// network is what an in-process outermost hop dials: tor's proxy when
// there is one, else the network directly.
func (c *Client) network() (transport.DialFunc, error) {
	if c.opt.ProxyURL == "" {
		return transport.Direct, nil
	}
	return upstream(c.opt.ProxyURL)
}

// process returns the running child for key, starting it the first time.
// Once started, a child that exits is restarted by its supervisor.
func (c *Client) process(ctx context.Context, key procKey) (*ptproc.Process, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errClientClosed
	}
	slot := c.procs[key]
	if slot == nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("no program was started for this chain")
	}
	if slot.sup == nil {
		name := filepath.Base(slot.plugin.Path)
		dir := filepath.Join(c.opt.StateDir, name+"-"+strconv.Itoa(key.plugin))
		spec := ptproc.Spec{
			Name:         name,
			Path:         slot.plugin.Path,
			Args:         slot.plugin.Args,
			Role:         ptproc.Client,
			Methods:      append([]string(nil), slot.methods...),
			StateDir:     dir,
			StartTimeout: c.opt.StartTimeout,
			Logger:       c.log,
		}
		if key.outer {
			spec.ProxyURL = c.opt.ProxyURL
			spec.StateDir = dir + "-proxied"
		}
		if c.opt.OnChildLog != nil {
			spec.OnLog = func(sev ptproc.Severity, msg string) { c.opt.OnChildLog(name, sev, msg) }
		}
		slot.sup = &supervisor{
			name: slot.plugin.Path,
			life: c.ctx, // the child lives as long as the client
			log:  c.log,
			start: func(ctx context.Context) (*ptproc.Process, error) {
				p, err := ptproc.Start(ctx, spec)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", spec.Path, err)
				}
				c.log.Info("PT program started", "program", spec.Path, "pid", p.Pid(), "methods", spec.Methods)
				return p, nil
			},
			onEvent: c.opt.OnEvent,
			observe: childObserver(c.opt.Observer, name, clientChildName(name, key)),
		}
	}
	sup := slot.sup
	c.mu.Unlock()
	if p, err := sup.Current(); err == nil {
		return p, nil
	}
	return sup.Start(ctx, &c.sups) // ctx, or Close, aborts a hanging start
}

// endpoint returns the SOCKS address of method in the child key, and the
// child's process ID.
func (c *Client) endpoint(ctx context.Context, key procKey, method string, launch bool) (*net.TCPAddr, int, error) {
	var p *ptproc.Process
	var err error
	if launch {
		p, err = c.process(ctx, key)
	} else {
		c.mu.Lock()
		slot := c.procs[key]
		var sup *supervisor
		if slot != nil {
			sup = slot.sup
		}
		c.mu.Unlock()
		if sup == nil {
			err = errors.New("the program did not start")
		} else {
			p, err = sup.Current()
		}
	}
	if err != nil {
		return nil, 0, err
	}
	m, ok := p.Methods()[method]
	if !ok {
		why := "the program does not offer it"
		if e, ok := p.MethodErrors()[method]; ok {
			why = "the program says: " + e
		}
		return nil, 0, fmt.Errorf("method %q: %s", method, why)
	}
	if m.Protocol != "socks5" {
		return nil, 0, fmt.Errorf("method %q speaks %s; only socks5 is supported", method, m.Protocol)
	}
	return m.Addr, p.Pid(), nil
}

// HopError says which hop of a chain failed, which PT program was asked to
// reach what, and why.
type HopError struct {
	Alias  string
	Hop    int    // 0 is innermost; -1 when no hop is to blame (bad arguments)
	Method string // the hop's method
	// Program is what serves the hop: the PT program, "unmanaged PT" or
	// "in-process"; Proxy is a PT's SOCKS address. Both are empty when the
	// hop failed before it was asked.
	Program, Proxy string
	// Target is what the hop was asked to reach: Bridge, the chain's
	// destination, for the outermost hop and for in-process hops (which
	// reach it through the next hop's connection), the next hop's shim
	// for a PT inside another hop.
	Target, Bridge string
	Err            error
}

func (e *HopError) Error() string {
	switch {
	case e.Hop < 0:
		return fmt.Sprintf("chain %s: %v", e.Alias, e.Err)
	case e.Program == "":
		return fmt.Sprintf("chain %s: hop %d (%s): %v", e.Alias, e.Hop, e.Method, e.Err)
	case e.Proxy == "":
		return fmt.Sprintf("chain %s: hop %d (%s, %s): %v", e.Alias, e.Hop, e.Method, e.Program, e.Err)
	case e.Target == e.Bridge:
		return fmt.Sprintf("chain %s: hop %d (%s, %s at %s) could not reach %s: %v",
			e.Alias, e.Hop, e.Method, e.Program, e.Proxy, e.Target, e.Err)
	default:
		return fmt.Sprintf("chain %s: hop %d (%s, %s at %s) could not reach %s through hop %d's shim %s: %v",
			e.Alias, e.Hop, e.Method, e.Program, e.Proxy, e.Bridge, e.Hop+1, e.Target, e.Err)
	}
}

func (e *HopError) Unwrap() error { return e.Err }

// ReplyCode is the SOCKS5 reply that tells the application what failed.
func (e *HopError) ReplyCode() byte { return shim.ReplyCodeFor(e.Err) }

// abandoned says why a setup ended early when the hops are not to blame:
// the caller's ctx was cancelled, or the client is closing.
func (c *Client) abandoned(ctx context.Context, start time.Time) error {
	switch {
	case c.ctx.Err() != nil:
		return errClientClosed
	case ctx.Err() != nil:
		return fmt.Errorf("setup abandoned after %v: %w", time.Since(start).Round(time.Millisecond), context.Cause(ctx))
	}
	return nil
}

// withElapsed adds how long a PT was waited for to a timeout.
func withElapsed(err error, start time.Time) error {
	if isTimeout(err) {
		return fmt.Errorf("no SOCKS reply in %v: %w", time.Since(start).Round(time.Millisecond), err)
	}
	return err
}

// enter registers a connection unless the client is closed.
func (c *Client) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClientClosed
	}
	c.conns.Add(1)
	return nil
}

// track registers an established connection, for Close to end, unless the
// client closed meanwhile.
func (c *Client) track(conn *Conn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errClientClosed
	}
	c.open[conn] = struct{}{}
	return nil
}

func (c *Client) untrack(conn *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.open, conn)
}

// Close ends every chained connection and every child, and waits for them.
// The in-process transports hold nothing beyond their connections.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := c.procs
	open := c.open
	c.open = map[*Conn]struct{}{}
	c.mu.Unlock()
	c.cancel()
	for conn := range open {
		conn.inner.Close()
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(procs))
	for _, slot := range procs {
		if slot.sup == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := slot.sup.Close(); err != nil {
				errs <- fmt.Errorf("%s: %w", slot.plugin.Path, err)
			}
		}()
	}
	wg.Wait()
	c.sups.Wait()
	c.conns.Wait()
	close(errs)
	var all []error
	for e := range errs {
		all = append(all, e)
	}
	return errors.Join(all...)
}

// Processes returns the pids of the running children (for tests and stats).
func (c *Client) Processes() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, slot := range c.procs {
		if slot.sup != nil {
			if pid := slot.sup.Pid(); pid != 0 {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// MakeStateDir creates dir (0700) when it does not exist.
func MakeStateDir(dir string) error { return os.MkdirAll(dir, 0o700) }
