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

	"github.com/ptcombiner/ptcombiner/metadata"
	"github.com/ptcombiner/ptcombiner/ptproc"
	"github.com/ptcombiner/ptcombiner/shim"
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
	Config   *Config
	StateDir string // each child gets StateDir/<program>-<n>/
	// ProxyURL is tor's TOR_PT_PROXY; it is given to the programs that serve
	// the outermost hop of a chain, and only to them.
	ProxyURL string
	Logger   *slog.Logger // nil: slog.Default()
	// SetupTimeout bounds a whole chained connection's setup: every SOCKS
	// handshake and every shim's accept. 0: DefaultSetupTimeout.
	SetupTimeout time.Duration
	// StartTimeout bounds a child's start, up to its CMETHODS DONE.
	StartTimeout time.Duration
	// Linger bounds how long inner hops may drain after the application's
	// side of a connection has closed. 0: DefaultLinger.
	Linger time.Duration
	// OnChildLog, when set, receives every child's LOG lines (sanitised).
	OnChildLog func(program string, severity ptproc.Severity, message string)
	// OnEvent, when set, hears when a child exits and is restarted.
	OnEvent func(Event)
}

// Client runs chains on the client side. Its methods are safe for
// concurrent use.
type Client struct {
	opt ClientOptions
	log *slog.Logger

	ctx    context.Context // ends every connection when cancelled
	cancel context.CancelFunc
	conns  sync.WaitGroup // every goroutine of every chained connection
	sups   sync.WaitGroup // the children's supervisors

	mu     sync.Mutex
	procs  map[procKey]*procSlot
	closed bool
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
	return &Client{opt: opt, log: log, ctx: ctx, cancel: cancel, procs: map[procKey]*procSlot{}}
}

// hopKey returns the child that serves position i of ch.
func (c *Client) hopKey(ch Chain, i int) (procKey, error) {
	for idx, p := range c.opt.Config.Plugins {
		for _, m := range p.Methods {
			if m == ch.Hops[i] {
				return procKey{plugin: idx, outer: c.opt.ProxyURL != "" && i == len(ch.Hops)-1}, nil
			}
		}
	}
	return procKey{}, fmt.Errorf("method %q is offered by no program", ch.Hops[i])
}

// Start launches, in parallel, every program the named chains need, each
// once, with every method name they need from it. It returns, per name, nil
// when the chain is ready, or why it cannot start. Names that are no alias
// nor method are left out of the result: tor asks for every transport of
// the torrc line, and unknown ones are ignored silently (pt-spec 3.2.2).
func (c *Client) Start(ctx context.Context, names []string) map[string]error {
	result := map[string]error{}
	need := map[procKey]map[string]bool{}
	chains := map[string]Chain{}
	for _, name := range names {
		ch, ok := c.opt.Config.Lookup(name)
		if !ok {
			continue
		}
		if err := c.opt.Config.CheckPlacement(ch); err != nil {
			result[name] = err // refused before any program starts for it
			continue
		}
		chains[name] = ch
		for i := range ch.Hops {
			key, err := c.hopKey(ch, i)
			if err != nil {
				result[name] = err
				break
			}
			if need[key] == nil {
				need[key] = map[string]bool{}
			}
			need[key][ch.Hops[i]] = true
		}
	}
	c.mu.Lock()
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
	c.mu.Unlock()

	var wg sync.WaitGroup
	for key := range need {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.process(ctx, key) // records its own error in the slot
		}()
	}
	wg.Wait()

	for name, ch := range chains {
		if result[name] != nil {
			continue
		}
		for i := range ch.Hops {
			if _, err := c.endpoint(ctx, ch, i, false); err != nil {
				result[name] = err
				break
			}
		}
		if _, done := result[name]; !done {
			result[name] = nil
		}
	}
	return result
}

// process returns the running child for key, starting it the first time.
// Once started, a child that exits is restarted by its supervisor.
func (c *Client) process(ctx context.Context, key procKey) (*ptproc.Process, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errors.New("client is closed")
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
		}
	}
	sup := slot.sup
	c.mu.Unlock()
	if p, err := sup.Current(); err == nil {
		return p, nil
	}
	return sup.Start(ctx, &c.sups) // ctx, or Close, aborts a hanging start
}

// endpoint returns the SOCKS address of the method serving hop i of ch.
func (c *Client) endpoint(ctx context.Context, ch Chain, i int, launch bool) (*net.TCPAddr, error) {
	key, err := c.hopKey(ch, i)
	if err != nil {
		return nil, err
	}
	var p *ptproc.Process
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
		return nil, err
	}
	m, ok := p.Methods()[ch.Hops[i]]
	if !ok {
		why := "the program does not offer it"
		if e, ok := p.MethodErrors()[ch.Hops[i]]; ok {
			why = "the program says: " + e
		}
		return nil, fmt.Errorf("method %q: %s", ch.Hops[i], why)
	}
	if m.Protocol != "socks5" {
		return nil, fmt.Errorf("method %q speaks %s; only socks5 is supported", ch.Hops[i], m.Protocol)
	}
	return m.Addr, nil
}

// HopError says which hop of a chain failed, which PT program was asked to
// reach what, and why.
type HopError struct {
	Alias  string
	Hop    int    // 0 is innermost; -1 when no hop is to blame (bad arguments)
	Method string // the hop's method
	// Program is the PT program serving the hop, and Proxy its SOCKS
	// address; both are empty when the hop failed before it was asked.
	Program, Proxy string
	// Target is what the hop was asked to reach: Bridge, the chain's
	// destination, for the outermost hop, the next hop's shim for the
	// others.
	Target, Bridge string
	Err            error
}

func (e *HopError) Error() string {
	switch {
	case e.Hop < 0:
		return fmt.Sprintf("chain %s: %v", e.Alias, e.Err)
	case e.Proxy == "":
		return fmt.Sprintf("chain %s: hop %d (%s): %v", e.Alias, e.Hop, e.Method, e.Err)
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

// Conn is an established chained connection: its *net.TCPConn is the
// connection to the innermost PT, whose SOCKS request was granted. Close it
// (after use or after shim.Pipe) to release the chain's shims.
type Conn struct {
	*net.TCPConn
	release func()
	once    sync.Once
}

// Close closes the connection to the innermost PT and lets the inner hops
// drain for at most the Client's Linger before they are closed.
func (c *Conn) Close() error {
	err := c.TCPConn.Close()
	c.once.Do(c.release)
	return err
}

// hopPlan is one hop of a connection being set up: the PT asked, and what
// it is asked to reach.
type hopPlan struct {
	method, program string
	proxy           string // the PT's SOCKS address
	user, pass      []byte // its arguments, split as tor splits them
	target          string // the next hop's shim, or the bridge
}

// hopResult is what shim i reports once its hop is set up or has failed.
type hopResult struct {
	shim     int  // 1..n-1; 0 in an empty slot: no report
	accepted bool // hop shim-1 connected to the shim
	// err: when accepted, why hop shim's SOCKS request failed; otherwise
	// why hop shim-1 never connected. Nil when the hop is set up.
	err error
	// abandoned: err is only the setup's cancellation, because another
	// hop failed first, the caller gave up or the client is closing.
	abandoned bool
}

// Dial sets up one connection through the chain named name to target (the
// bridge), with args in tor's per-connection form (N.key for hop N only).
// Cancelling ctx abandons the setup; it does not end an established
// connection.
func (c *Client) Dial(ctx context.Context, name, target string, args metadata.Args) (*Conn, error) {
	start := time.Now()
	ch, ok := c.opt.Config.Lookup(name)
	if !ok {
		return nil, &HopError{Alias: name, Hop: -1, Err: errors.New("no such chain")}
	}
	if err := c.opt.Config.CheckPlacement(ch); err != nil {
		return nil, &HopError{Alias: name, Hop: -1, Err: err}
	}
	hops, err := c.planHops(ctx, ch, args)
	if err != nil {
		return nil, err
	}
	n := len(hops)

	// The connection's lifetime: cancelled by Conn.Close after the linger,
	// by a failed setup, or by Client.Close.
	life, endLife := context.WithCancel(c.ctx)
	setup, endSetup := context.WithTimeout(life, c.opt.SetupTimeout)
	stopCaller := context.AfterFunc(ctx, endSetup)
	defer stopCaller()
	if err := c.enter(); err != nil {
		endSetup()
		endLife()
		return nil, &HopError{Alias: name, Hop: -1, Err: err}
	}
	var group sync.WaitGroup
	fail := func() {
		endSetup()
		endLife()
		group.Wait()
		c.conns.Done()
	}

	// Shims in reverse order: shim i forwards what hop i-1 sends it into hop i.
	shims := make([]*shim.OneUse, n)
	for i := n - 1; i >= 1; i-- {
		l, err := shim.ListenOnce(shimListenAddr)
		if err != nil {
			for _, s := range shims[i+1:] {
				s.Close()
			}
			fail()
			return nil, &HopError{Alias: name, Hop: i, Method: ch.Hops[i], Err: fmt.Errorf("shim listener: %w", err)}
		}
		shims[i] = l
	}
	for i := range hops {
		hops[i].target = target
		if i < n-1 {
			hops[i].target = shims[i+1].Addr().String()
		}
	}
	results := make(chan hopResult, n)
	for i := 1; i < n; i++ {
		group.Add(1)
		go func() {
			defer group.Done()
			c.runShim(setup, life, shims[i], i, hops[i], start, results)
		}()
	}
	conn0, err := shim.DialSOCKS5(setup, hops[0].proxy, hops[0].target, hops[0].user, hops[0].pass)
	if err != nil {
		err = withElapsed(err, start)
	}
	reports := collect(setup, n, err != nil, results)
	rootHop, rootErr := blame(err, reports)
	if rootErr == nil && !allSetUp(reports) {
		rootHop, rootErr = 0, errors.New("setup abandoned") // explained by abandoned below
	}
	if rootErr != nil {
		if conn0 != nil {
			conn0.Close()
		}
		for _, s := range shims[1:] {
			s.Close()
		}
		fail()
		if cause := c.abandoned(ctx, start); cause != nil {
			return nil, &HopError{Alias: name, Hop: -1, Err: cause}
		}
		h := hops[rootHop]
		return nil, &HopError{Alias: name, Hop: rootHop, Method: h.method, Program: h.program, Proxy: h.proxy,
			Target: h.target, Bridge: target, Err: rootErr}
	}
	release := func() {
		go func() {
			t := time.AfterFunc(c.opt.Linger, endLife)
			group.Wait()
			t.Stop()
			endSetup()
			endLife()
			c.conns.Done()
		}()
	}
	return &Conn{TCPConn: conn0, release: release}, nil
}

// planHops finds the PT serving each hop of ch, starting it if need be,
// and its arguments.
func (c *Client) planHops(ctx context.Context, ch Chain, args metadata.Args) ([]hopPlan, error) {
	perHop, err := metadata.SplitHops(args, len(ch.Hops))
	if err != nil {
		return nil, &HopError{Alias: ch.Alias, Hop: -1, Err: err}
	}
	hops := make([]hopPlan, len(ch.Hops))
	for i, m := range ch.Hops {
		addr, err := c.endpoint(ctx, ch, i, true)
		if err != nil {
			return nil, &HopError{Alias: ch.Alias, Hop: i, Method: m, Err: err}
		}
		user, pass, err := metadata.SOCKS5Credentials(metadata.EncodeClientArgs(perHop[i]))
		if err != nil {
			return nil, &HopError{Alias: ch.Alias, Hop: i, Method: m, Err: err}
		}
		p, _ := c.opt.Config.PluginFor(m) // endpoint found it
		hops[i] = hopPlan{method: m, program: p.Path, proxy: addr.String(), user: user, pass: pass}
	}
	return hops, nil
}

// collect gathers the reports of a connection's n-1 shims, indexed by shim.
// Every shim reports within the setup's bound, but once a hop has failed
// (hop 0 when failed0) while the setup still runs, the shims waiting for a
// connection that will never come are not waited for: the others get a
// moment to report a failure further out. A shim whose hop failed reports
// before it closes its connection from the hop before, so a failure
// further out is normally in before its consequences.
func collect(setup context.Context, n int, failed0 bool, results <-chan hopResult) []hopResult {
	reports := make([]hopResult, n)
	var timer *time.Timer
	var grace <-chan time.Time // nil: no failure yet, or the setup is over
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	failed := func() {
		if timer == nil && setup.Err() == nil {
			timer = time.NewTimer(250 * time.Millisecond)
			grace = timer.C
		}
	}
	if failed0 {
		failed()
	}
	for got := 0; got < n-1; got++ {
		select {
		case r := <-results:
			reports[r.shim] = r
			if r.err != nil && !r.abandoned {
				failed()
			}
		case <-grace:
			return reports
		}
	}
	return reports
}

// blame returns the hop that caused a failed setup, and its error, or -1
// and nil when every hop succeeded. A hop failing makes the hops inside it
// fail too, so the outermost failure is the cause; but only among the hops
// that were asked: hop 0 always is, hop i once hop i-1 connected to shim i.
// A hop whose shim never got its connection failed as a consequence of the
// hop before, which is the one to name.
func blame(err0 error, reports []hopResult) (int, error) {
	root, rootErr := -1, error(nil)
	if err0 != nil {
		root, rootErr = 0, err0
	}
	for i := 1; i < len(reports); i++ {
		r := reports[i]
		hop, asked := i, r.accepted
		if !r.accepted {
			hop, asked = i-1, i-1 == 0 || reports[i-1].accepted
		}
		// For one hop, that it never connected to the next shim says more
		// than its own SOCKS exchange, which timed out waiting for it.
		if r.err != nil && !r.abandoned && asked && (hop > root || hop == root && !r.accepted) {
			root, rootErr = hop, r.err
		}
	}
	return root, rootErr
}

// allSetUp reports whether every shim reported its hop set up.
func allSetUp(reports []hopResult) bool {
	for _, r := range reports[1:] {
		if r.shim == 0 || !r.accepted || r.err != nil {
			return false
		}
	}
	return true
}

// abandoned says why a setup ended early when the hops are not to blame:
// the caller's ctx was cancelled, or the client is closing.
func (c *Client) abandoned(ctx context.Context, start time.Time) error {
	switch {
	case c.ctx.Err() != nil:
		return errors.New("client is closed")
	case ctx.Err() != nil:
		return fmt.Errorf("setup abandoned after %v: %w", time.Since(start).Round(time.Millisecond), context.Cause(ctx))
	}
	return nil
}

// withElapsed adds how long a hop was waited for to a timeout.
func withElapsed(err error, start time.Time) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("no SOCKS reply in %v: %w", time.Since(start).Round(time.Millisecond), err)
	}
	return err
}

// runShim is shim i: it accepts hop i-1's one connection, asks hop i to
// connect to its target, reports the outcome, and then pipes.
func (c *Client) runShim(setup, life context.Context, l *shim.OneUse, i int, h hopPlan, start time.Time, results chan<- hopResult) {
	// Cancelled (not expired): another hop failed, or the caller or the
	// client ended the setup.
	abandoned := func() bool { return setup.Err() != nil && !errors.Is(setup.Err(), context.DeadlineExceeded) }
	in, err := l.Accept(setup)
	if err != nil {
		r := hopResult{shim: i, err: fmt.Errorf("shim: %w", err), abandoned: abandoned()}
		// The listener's deadline is the setup's, and may fire first.
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
			r.err = fmt.Errorf("it never connected to that shim in %v (a PT that does not connect to the address it is given must be the last hop, see docs/client.md): %w",
				time.Since(start).Round(time.Millisecond), context.DeadlineExceeded)
		}
		results <- r
		return
	}
	out, err := shim.DialSOCKS5(setup, h.proxy, h.target, h.user, h.pass)
	if err != nil {
		// Report before closing in: hop i-1 fails when in closes, and
		// Dial's collect must find this report when it does.
		results <- hopResult{shim: i, accepted: true, err: withElapsed(err, start), abandoned: abandoned()}
		in.Close()
		return
	}
	results <- hopResult{shim: i, accepted: true}
	shim.Pipe(life, in, out)
}

// enter registers a connection unless the client is closed.
func (c *Client) enter() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("client is closed")
	}
	c.conns.Add(1)
	return nil
}

// Close ends every chained connection and every child, and waits for them.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := c.procs
	c.mu.Unlock()
	c.cancel()
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
