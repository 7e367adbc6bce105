// Package runner owns what ptcombiner-client and ptcombiner-server share as
// programs: their common flags, the configuration they load, their logging
// (stderr, and LOG lines towards tor), and the termination monitor that ends
// them on stdin EOF, SIGTERM and SIGINT (pt-spec 3.4, PROTOCOLS.md A22-A25).
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/chain"
	"github.com/ptcombiner/ptcombiner/internal/gctune"
	"github.com/ptcombiner/ptcombiner/ptproc"
)

// Version is set at build time with -ldflags "-X .../internal/runner.Version=v1.2.3".
var Version = "dev"

// Flags are the flags both programs take.
func Flags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringSliceFlag{Name: "plugin", Usage: "a PT program and the methods it offers: `NAMES=PATH`, e.g. obfs3,obfs4=/usr/bin/obfs4proxy, or an unmanaged PT's SOCKS5 port (client): NAME=socks5:ADDR (repeatable)"},
		&cli.StringSliceFlag{Name: "builtin", Usage: "methods served in-process, without a PT program: `NAMES`, e.g. obfs3,obfs4 (obfs2, obfs3, obfs4; scramblesuit client only) (repeatable)"},
		&cli.StringSliceFlag{Name: "chain", Usage: "a chain exposed to tor under an alias: `ALIAS=CHAIN`, innermost first, e.g. obfs3_obfs4=obfs3|obfs4 (repeatable)"},
		&cli.StringFlag{Name: "config", Usage: "a torrc-like `FILE` of ClientTransportPlugin/ServerTransportPlugin, Alias and ServerTransportOptions lines"},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "stderr log level: debug, info, warn or error"},
		&cli.StringFlag{Name: "log-file", Usage: "log to `FILE` instead of stderr (tor records a PT's stderr only at info level)"},
		&cli.BoolFlag{Name: "unsafe-logging", Usage: "show IP addresses in logs (they are elided by default)"},
	}, metricsFlags()...)
}

// LoadConfig builds the configuration from --config and the --plugin,
// --builtin, --chain, --indirect and (server) --outer-listens and
// --proxy-protocol flags, and
// validates it.
func LoadConfig(c *cli.Context, role chain.Role) (*chain.Config, error) {
	cfg := &chain.Config{}
	if path := c.String("config"); path != "" {
		f, err := chain.ParseFile(path, role)
		if err != nil {
			return nil, err
		}
		cfg.Merge(f)
	}
	for _, p := range c.StringSlice("plugin") {
		if err := cfg.AddPluginFlag(p); err != nil {
			return nil, err
		}
	}
	for _, b := range c.StringSlice("builtin") {
		if err := cfg.AddBuiltinFlag(b); err != nil {
			return nil, err
		}
	}
	for _, ch := range c.StringSlice("chain") {
		if err := cfg.AddChainFlag(ch); err != nil {
			return nil, err
		}
	}
	for _, m := range c.StringSlice("indirect") {
		if err := cfg.AddIndirectFlag(m); err != nil {
			return nil, err
		}
	}
	for _, a := range c.StringSlice("outer-listens") { // the server's flag
		if err := cfg.AddOuterListensFlag(a); err != nil {
			return nil, err
		}
	}
	for _, a := range c.StringSlice("proxy-protocol") { // the server's flag
		if err := cfg.AddProxyProtocolFlag(a); err != nil {
			return nil, err
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Logger builds the program's logger: text to stderr (or --log-file), and,
// when run by tor, warnings and errors also as LOG lines on stdout so that
// tor's log shows them.
func Logger(c *cli.Context, managed bool) (*slog.Logger, io.Closer, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, nil, fmt.Errorf("--log-level: %w", err)
	}
	var w io.Writer = os.Stderr
	var closer io.Closer = io.NopCloser(nil)
	if path := c.String("log-file"); path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("--log-file: %w", err)
		}
		w, closer = f, f
	}
	var h slog.Handler = slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	if !c.Bool("unsafe-logging") {
		h = elideHandler{h}
	}
	if managed {
		h = torHandler{next: h, elide: !c.Bool("unsafe-logging")}
	}
	return slog.New(h), closer, nil
}

// Managed reports whether tor (or another PT parent) runs this program.
func Managed() bool { return os.Getenv("TOR_PT_MANAGED_TRANSPORT_VER") != "" }

// FailBeforeDone reports a fatal setup error to the parent and waits, as
// PROTOCOLS.md A25 asks: a PT that exits before its *METHODS DONE can make
// tor 0.4.8 abort, so the error line is flushed and the program waits for
// SIGTERM or stdin EOF, at most timeout, before it returns.
func FailBeforeDone(keyword, msg string, timeout time.Duration) {
	fmt.Fprintln(os.Stderr, msg)
	if !Managed() {
		return
	}
	if keyword != "" {
		fmt.Fprintf(pt.Stdout, "%s %s\n", keyword, ptproc.Sanitize(msg))
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	m := NewMonitor(ctx, true)
	defer m.Stop()
	<-m.Exit()
}

// Monitor watches for the events that end a PT (pt-spec 3.4 and proposal
// 180, as lyrebird does it): stdin EOF when TOR_PT_EXIT_ON_STDIN_CLOSE=1 and
// SIGTERM end at once; the first SIGINT asks for a graceful stop (close the
// listeners, let connections drain), the second ends at once.
type Monitor struct {
	drain, exit chan struct{}
	drainOnce   sync.Once
	exitOnce    sync.Once
	stop        context.CancelFunc
	sigs        chan os.Signal
	Reason      string
	mu          sync.Mutex
}

// NewMonitor starts watching. watchStdin is normally Managed() and
// TOR_PT_EXIT_ON_STDIN_CLOSE=1; the monitor ends when ctx does.
func NewMonitor(ctx context.Context, watchStdin bool) *Monitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &Monitor{drain: make(chan struct{}), exit: make(chan struct{}), stop: cancel, sigs: make(chan os.Signal, 4)}
	signal.Notify(m.sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		defer signal.Stop(m.sigs)
		sigints := 0
		for {
			select {
			case <-ctx.Done():
				m.end("context ended")
				return
			case sig := <-m.sigs:
				if sig == syscall.SIGINT {
					sigints++
					if sigints == 1 {
						m.setReason("SIGINT: closing listeners, draining connections")
						m.drainOnce.Do(func() { close(m.drain) })
						continue
					}
				}
				m.end("signal " + sig.String())
				return
			}
		}
	}()
	// A parent that dies is noticed even when stdin is not watched, or is
	// held open by someone else: we are re-parented (lyrebird's termmon
	// does the same).
	parent := os.Getppid()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != parent {
					m.end("parent process died")
					return
				}
			}
		}
	}()
	if watchStdin {
		go func() {
			// Nothing is ever read from stdin; we wait for its end. The
			// goroutine ends with the process (os.Stdin cannot be
			// interrupted portably); it only closes a channel.
			io.Copy(io.Discard, os.Stdin)
			m.end("stdin closed")
		}()
	}
	return m
}

func (m *Monitor) setReason(r string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Reason = r
}

func (m *Monitor) end(reason string) {
	m.exitOnce.Do(func() {
		m.setReason(reason)
		close(m.exit)
	})
}

// Why says what ended (or is draining) the program.
func (m *Monitor) Why() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Reason
}

// Drain is closed on the first SIGINT.
func (m *Monitor) Drain() <-chan struct{} { return m.drain }

// Exit is closed when the program must end now.
func (m *Monitor) Exit() <-chan struct{} { return m.exit }

// ExitContext returns a context cancelled by Exit or by cancel, for the
// start of the PT programs: SIGTERM or stdin EOF then aborts a start that
// hangs at once, without waiting for --start-timeout.
func (m *Monitor) ExitContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-m.exit:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Stop releases the monitor's signal handling.
func (m *Monitor) Stop() { m.stop() }

// WatchStdin says whether stdin EOF must end the program (pt-spec: only the
// exact value "1" means so).
func WatchStdin() bool { return os.Getenv("TOR_PT_EXIT_ON_STDIN_CLOSE") == "1" }

// torHandler relays warnings and errors to tor as LOG lines, sanitised
// (goptlib panics on non-ASCII) and on one line.
type torHandler struct {
	next  slog.Handler
	attrs []slog.Attr
	elide bool // scrub addresses from LOG lines too (tor keeps them)
}

func (h torHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h torHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		b.WriteString(r.Message)
		add := func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		}
		for _, a := range h.attrs {
			add(a)
		}
		r.Attrs(add)
		sev := pt.LogSeverityWarning
		if r.Level >= slog.LevelError {
			sev = pt.LogSeverityError
		}
		msg := b.String()
		if h.elide {
			msg = ElideAddrs(msg)
		}
		pt.Log(sev, ptproc.Sanitize(msg))
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h torHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return torHandler{next: h.next.WithAttrs(as), attrs: append(append([]slog.Attr{}, h.attrs...), as...), elide: h.elide}
}

func (h torHandler) WithGroup(name string) slog.Handler {
	return torHandler{next: h.next.WithGroup(name), attrs: h.attrs, elide: h.elide}
}

// ErrReported is returned once a fatal error has been reported to tor (and
// the program has waited, as FailBeforeDone does): exit with status 1.
var ErrReported = cli.Exit("", 1)

// ManagedSetup builds the logger and the configuration of a program run by
// tor. On failure it reports an ENV-ERROR to tor, waits as PROTOCOLS.md A25
// asks, and returns ErrReported.
func ManagedSetup(c *cli.Context, role chain.Role, prog string) (*slog.Logger, io.Closer, *chain.Config, error) {
	log, closer, err := Logger(c, true)
	if err != nil {
		FailBeforeDone("ENV-ERROR", prog+": "+err.Error(), failWait)
		return nil, nil, nil, ErrReported
	}
	cfg, err := LoadConfig(c, role)
	if err != nil {
		closer.Close()
		FailBeforeDone("ENV-ERROR", prog+": "+err.Error(), failWait)
		return nil, nil, nil, ErrReported
	}
	return log, closer, cfg, nil
}

// ManagedStateDir makes tor's TOR_PT_STATE_LOCATION and ptcombiner's own
// directory inside it (0700), or reports an ENV-ERROR.
func ManagedStateDir() (string, error) {
	dir, err := pt.MakeStateDir()
	if err == nil {
		dir = filepath.Join(dir, "ptcombiner")
		err = os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		FailBeforeDone("ENV-ERROR", "cannot make the state directory: "+err.Error(), failWait)
		return "", ErrReported
	}
	return dir, nil
}

// Fail reports a fatal setup error (keyword "" when goptlib has already
// written the line) and returns ErrReported.
func Fail(keyword, msg string) error {
	FailBeforeDone(keyword, msg, failWait)
	return ErrReported
}

// failWait bounds the wait after a fatal error line (PROTOCOLS.md A25).
const failWait = 10 * time.Second

// Run runs app, one of the two programs, with args and returns its exit
// status. Under tor, stdout is the protocol channel: pt-spec 3.3, "All
// Pluggable Transport Proxies communicate to the parent process via writing
// NL-terminated lines to stdout", each "<Keyword> <OptArgs> <NL>"
// (PROTOCOLS.md A8), and tor accepts ENV-ERROR only before VERSION (A10). So when managed, urfave/cli's help and version
// texts go to stderr (app.Writer, which its HelpPrinter and VersionPrinter
// write to), and a flag error, an unexpected argument or a bad value is
// reported as "ENV-ERROR <reason>" and followed by FailBeforeDone's wait; so
// is a run that showed only the help or the version, since tor then gets no
// VERSION line either. Without tor, --help and --version print on stdout, as
// a command does for a person, and errors go to stderr.
//
// app.OnUsageError replaces urfave/cli's reaction to a flag error, which is
// to print "Incorrect Usage" and the whole help on app.Writer, by the
// error alone, with a pointer to --help. (urfave/cli v2.27 never calls
// CommandNotFound for an app without subcommands: an unknown word reaches
// the Action, which refuses it.)
func Run(app *cli.App, args []string) int {
	gctune.Start()
	managed := Managed()
	app.Writer = os.Stdout
	if managed {
		app.Writer = os.Stderr
	}
	app.ErrWriter = os.Stderr
	app.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return fmt.Errorf("%w (%s --help lists the flags)", err, app.Name)
	}
	app.Flags = append(app.Flags, &cli.BoolFlag{Name: manFlag, Hidden: true})
	action, ran := app.Action, false
	app.Action = func(c *cli.Context) error {
		ran = true
		if c.Bool(manFlag) {
			page, err := ManPage(app)
			if err == nil {
				_, err = fmt.Fprint(app.Writer, page)
			}
			return err
		}
		return action(c)
	}
	err := app.Run(args)
	switch {
	case errors.Is(err, ErrReported):
		return 1
	case err != nil:
		FailBeforeDone("ENV-ERROR", app.Name+": "+err.Error(), failWait)
		return 1
	case managed && !ran:
		FailBeforeDone("ENV-ERROR", app.Name+": run with --help or --version (printed on stderr): no transport runs", failWait)
		return 1
	}
	return 0
}
