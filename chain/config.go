package chain

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// Role says which side of a chain a configuration is for. A config file may
// hold both sides' lines; each side reads its own and skips the other's.
type Role int

const (
	// ClientRole reads ClientTransportPlugin lines.
	ClientRole Role = iota + 1
	// ServerRole reads ServerTransportPlugin and ServerTransportOptions lines.
	ServerRole
)

// PluginKind says what serves a Plugin's methods.
type PluginKind int

const (
	// ExecPlugin is a managed PT 1.0 program that the combiner launches
	// (torrc "exec PATH ARGS", --plugin NAMES=PATH).
	ExecPlugin PluginKind = iota
	// BuiltinPlugin is the in-process transports of package transport
	// (config "builtin", --builtin NAMES): no process is started.
	BuiltinPlugin
	// SOCKSPlugin is an unmanaged PT that already listens on a SOCKS5 port,
	// started by someone else (torrc "socks5 ADDR", --plugin
	// NAME=socks5:ADDR); client side only.
	SOCKSPlugin
)

func (k PluginKind) String() string {
	switch k {
	case ExecPlugin:
		return "exec"
	case BuiltinPlugin:
		return "builtin"
	case SOCKSPlugin:
		return "socks5"
	}
	return fmt.Sprintf("PluginKind(%d)", int(k))
}

// Plugin is one source of methods: a PT program (ExecPlugin), the builtin
// transports, or an unmanaged SOCKS5 PT.
type Plugin struct {
	Kind    PluginKind
	Methods []string // method names, as in the torrc line
	Path    string   // ExecPlugin: the program
	Args    []string // ExecPlugin: its command-line arguments
	Addr    string   // SOCKSPlugin: the PT's SOCKS5 address, host:port
	Source  string   // where it was defined, for error messages
}

// describe names what serves p's methods, for error messages.
func (p Plugin) describe() string {
	switch p.Kind {
	case BuiltinPlugin:
		return "builtin"
	case SOCKSPlugin:
		return "socks5 " + p.Addr
	}
	return p.Path
}

// same reports whether p and o are one source of methods.
func (p Plugin) same(o Plugin) bool {
	return p.Kind == o.Kind && p.Path == o.Path && equal(p.Args, o.Args) && p.Addr == o.Addr
}

// Chain is a named sequence of methods, innermost first: the application's
// bytes enter Hops[0]; Hops[len-1] is what the network sees.
type Chain struct {
	Alias  string
	Hops   []string
	Source string
}

// String renders the chain in its own syntax, "a|b|c".
func (c Chain) String() string { return strings.Join(c.Hops, "|") }

// Config is what the command line and the config file define. Its zero
// value is an empty, valid configuration.
type Config struct {
	Plugins []Plugin
	Chains  []Chain
	// ServerOptions are ServerTransportOptions lines, by alias, with their
	// N.key hop prefixes still on (server side only).
	ServerOptions map[string]metadata.Args
	// Indirect names methods, besides KnownIndirect, whose PT does not
	// connect to the address it is given (Indirect lines, --indirect); on
	// the bridge their server serves the public address itself.
	Indirect []string
	// OuterListens names chains (aliases, or methods as one-hop chains)
	// whose outermost hop, a direct PT, is given the public address to
	// listen on itself instead of the server's own listener in front of it
	// (OuterListens lines, --outer-listens; server side only).
	OuterListens []string
}

// KnownIndirect are the methods of PTs that do not connect to the address
// they are given, and so cannot be pointed at the next hop's shim: meek
// posts to the HTTPS front named in its url= and front= arguments,
// snowflake talks to its broker and to WebRTC proxies, webtunnel connects
// to the host of its url=. Such a method can only be the last hop of a
// chain; a configuration names others with Indirect.
//
// On the bridge the same names are the servers' own (the SMETHOD names of
// meek-server, snowflake-server and webtunnel's server; meek_lite is
// obfs4proxy's client of meek-server): what reaches them is a CDN, a
// snowflake proxy or a web server, not the client, so their server must
// listen on the chain's public address itself, as the outermost hop.
var KnownIndirect = []string{"meek", "meek_lite", "snowflake", "webtunnel"}

// IsIdentifier reports whether s is a C identifier, [a-zA-Z_][a-zA-Z0-9_]*,
// the only names tor accepts for transports (transports.c).
func IsIdentifier(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// ParseChain parses "a|b|c" (innermost first) into its method names.
func ParseChain(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("empty chain")
	}
	hops := strings.Split(s, "|")
	for i, h := range hops {
		if !IsIdentifier(h) {
			return nil, fmt.Errorf("chain %q: hop %d %q is not a method name ([a-zA-Z_][a-zA-Z0-9_]*)", s, i, h)
		}
	}
	return hops, nil
}

// AddPluginFlag adds a --plugin NAMES=PATH definition, or NAME=socks5:ADDR
// for an unmanaged PT already listening on a SOCKS5 port. PATH may not carry
// arguments (tor splits the torrc line on spaces); use the config file for
// programs that need them.
func (c *Config) AddPluginFlag(s string) error {
	names, path, ok := strings.Cut(s, "=")
	if !ok || names == "" || path == "" {
		return fmt.Errorf("--plugin %q: want NAMES=PATH, as in obfs3,obfs4=/usr/bin/obfs4proxy, or NAME=socks5:ADDR", s)
	}
	if addr, ok := strings.CutPrefix(path, "socks5:"); ok {
		return c.addSOCKSPlugin(names, addr, "--plugin "+s)
	}
	return c.addPlugin(names, path, nil, "--plugin "+s)
}

// AddBuiltinFlag adds a --builtin NAMES definition: methods, comma
// separated, served in-process by package transport. Whether a name exists
// (and has a server side) is checked when a chain using it starts, so that
// one bad name costs only its own chains.
func (c *Config) AddBuiltinFlag(s string) error {
	return c.addBuiltin(s, "--builtin "+s)
}

func (c *Config) addBuiltin(names, source string) error {
	methods, err := methodList(names, source)
	if err != nil {
		return err
	}
	for i := range c.Plugins {
		if p := &c.Plugins[i]; p.Kind == BuiltinPlugin {
			for _, m := range methods {
				if !contains(p.Methods, m) {
					p.Methods = append(p.Methods, m)
				}
			}
			return nil
		}
	}
	c.Plugins = append(c.Plugins, Plugin{Kind: BuiltinPlugin, Methods: methods, Source: source})
	return nil
}

// addSOCKSPlugin adds an unmanaged PT: one method on a SOCKS5 port that
// someone else runs (torrc's "ClientTransportPlugin NAME socks5 ADDR").
func (c *Config) addSOCKSPlugin(names, addr, source string) error {
	methods, err := methodList(names, source)
	if err != nil {
		return err
	}
	if len(methods) != 1 {
		return fmt.Errorf("%s: an unmanaged SOCKS5 PT serves one method, got %d (%s)", source, len(methods), names)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || port == "0" {
		return fmt.Errorf("%s: SOCKS5 address %q: want HOST:PORT, as in 127.0.0.1:9050", source, addr)
	}
	c.Plugins = append(c.Plugins, Plugin{Kind: SOCKSPlugin, Methods: methods, Addr: addr, Source: source})
	return nil
}

func methodList(names, source string) ([]string, error) {
	var methods []string
	for _, m := range strings.Split(names, ",") {
		if !IsIdentifier(m) {
			return nil, fmt.Errorf("%s: method name %q is not a C identifier ([a-zA-Z_][a-zA-Z0-9_]*)", source, m)
		}
		if !contains(methods, m) {
			methods = append(methods, m)
		}
	}
	return methods, nil
}

// AddChainFlag adds a --chain ALIAS=CHAIN definition.
func (c *Config) AddChainFlag(s string) error {
	alias, spec, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("--chain %q: want ALIAS=CHAIN, as in obfs3_obfs4='obfs3|obfs4'", s)
	}
	return c.addChain(alias, spec, "--chain "+s)
}

func (c *Config) addPlugin(names, path string, args []string, source string) error {
	methods, err := methodList(names, source)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(path) && !strings.Contains(path, "/") {
		// A bare program name is looked up in PATH now, so a typo is
		// reported at once and clearly.
		if p, err := lookPath(path); err == nil {
			path = p
		}
	}
	// One process per program: lines naming the same program with the same
	// arguments add to one Plugin.
	for i := range c.Plugins {
		p := &c.Plugins[i]
		if p.Kind == ExecPlugin && p.Path == path && equal(p.Args, args) {
			for _, m := range methods {
				if !contains(p.Methods, m) {
					p.Methods = append(p.Methods, m)
				}
			}
			return nil
		}
	}
	c.Plugins = append(c.Plugins, Plugin{Methods: methods, Path: path, Args: args, Source: source})
	return nil
}

func (c *Config) addChain(alias, spec, source string) error {
	if !IsIdentifier(alias) {
		return fmt.Errorf("%s: alias %q is not a C identifier ([a-zA-Z_][a-zA-Z0-9_]*), which is all tor accepts as a transport name", source, alias)
	}
	hops, err := ParseChain(spec)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	c.Chains = append(c.Chains, Chain{Alias: alias, Hops: hops, Source: source})
	return nil
}

// ParseFile reads a torrc-like config file for role. Each line is split
// shell-style; '#' starts a comment. Directives:
//
//	ClientTransportPlugin NAMES exec PATH [ARGS...]
//	ClientTransportPlugin NAMES builtin
//	ClientTransportPlugin NAME socks5 ADDR
//	ServerTransportPlugin NAMES exec PATH [ARGS...]
//	ServerTransportPlugin NAMES builtin
//	Alias ALIAS CHAIN
//	ServerTransportOptions ALIAS K=V [K=V...]
//	Indirect METHOD [METHOD...]
//	OuterListens ALIAS [ALIAS...]
//
// The other role's plugin and option lines (OuterListens is the server's)
// are accepted and skipped.
func ParseFile(path string, role Role) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	return Parse(f, path, role)
}

// Parse is ParseFile on a reader; name labels error messages.
func Parse(r io.Reader, name string, role Role) (*Config, error) {
	c := &Config{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for n := 1; sc.Scan(); n++ {
		src := fmt.Sprintf("%s:%d", name, n)
		words, err := SplitWords(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		if len(words) == 0 {
			continue
		}
		if err := c.parseDirective(words, role, src); err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return c, nil
}

func (c *Config) parseDirective(words []string, role Role, src string) error {
	switch strings.ToLower(words[0]) {
	case "clienttransportplugin", "servertransportplugin":
		return c.parsePluginLine(words, role, src)
	case "alias":
		if len(words) != 3 {
			return fmt.Errorf("%s: want Alias ALIAS CHAIN, as in Alias obfs3_obfs4 obfs3|obfs4", src)
		}
		return c.addChain(words[1], words[2], src)
	case "indirect":
		if len(words) < 2 {
			return fmt.Errorf("%s: want Indirect METHOD [METHOD...], as in Indirect dnstt", src)
		}
		return c.addIndirect(words[1:], src)
	case "outerlistens":
		if len(words) < 2 {
			return fmt.Errorf("%s: want OuterListens ALIAS [ALIAS...], as in OuterListens obfs4", src)
		}
		if role != ServerRole {
			return nil
		}
		return c.addOuterListens(words[1:], src)
	case "servertransportoptions":
		if len(words) < 3 {
			return fmt.Errorf("%s: want ServerTransportOptions ALIAS K=V [K=V...]", src)
		}
		if role != ServerRole {
			return nil
		}
		if !IsIdentifier(words[1]) {
			return fmt.Errorf("%s: %q is not a transport name", src, words[1])
		}
		for _, kv := range words[2:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return fmt.Errorf("%s: option %q is not K=V", src, kv)
			}
			if c.ServerOptions == nil {
				c.ServerOptions = make(map[string]metadata.Args)
			}
			if c.ServerOptions[words[1]] == nil {
				c.ServerOptions[words[1]] = make(metadata.Args)
			}
			c.ServerOptions[words[1]].Add(k, v)
		}
		return nil
	default:
		return fmt.Errorf("%s: unknown directive %q (want ClientTransportPlugin, ServerTransportPlugin, Alias, ServerTransportOptions, Indirect or OuterListens)", src, words[0])
	}
}

// parsePluginLine reads a ClientTransportPlugin or ServerTransportPlugin
// line; the other role's lines are checked for their form and skipped.
func (c *Config) parsePluginLine(words []string, role Role, src string) error {
	client := strings.EqualFold(words[0], "ClientTransportPlugin")
	mine := (role == ClientRole) == client
	kind := ""
	if len(words) >= 3 {
		kind = strings.ToLower(words[2])
	}
	switch {
	case kind == "exec" && len(words) >= 4:
		if mine {
			return c.addPlugin(words[1], words[3], words[4:], src)
		}
		return nil
	case kind == "builtin" && len(words) == 3:
		if mine {
			return c.addBuiltin(words[1], src)
		}
		return nil
	case kind == "socks5" && len(words) == 4 && client:
		if mine {
			return c.addSOCKSPlugin(words[1], words[3], src)
		}
		return nil
	case kind == "socks4" && client:
		return fmt.Errorf("%s: unmanaged SOCKS4 PTs are not supported (PT arguments need SOCKS5); use socks5", src)
	}
	if client {
		return fmt.Errorf("%s: want %s NAMES exec PATH [ARGS...], NAMES builtin, or NAME socks5 ADDR", src, words[0])
	}
	return fmt.Errorf("%s: want %s NAMES exec PATH [ARGS...] or NAMES builtin", src, words[0])
}

// AddIndirectFlag adds an --indirect METHODS definition: methods, comma
// separated, whose PT does not connect to the address it is given.
func (c *Config) AddIndirectFlag(s string) error {
	return c.addIndirect(strings.Split(s, ","), "--indirect "+s)
}

func (c *Config) addIndirect(methods []string, source string) error {
	return addNames(&c.Indirect, "method name", methods, source)
}

// addNames adds names, each a C identifier, to list, each once; what says
// what they are in the error.
func addNames(list *[]string, what string, names []string, source string) error {
	for _, n := range names {
		if !IsIdentifier(n) {
			return fmt.Errorf("%s: %s %q is not a C identifier ([a-zA-Z_][a-zA-Z0-9_]*)", source, what, n)
		}
		if !contains(*list, n) {
			*list = append(*list, n)
		}
	}
	return nil
}

// AddOuterListensFlag adds an --outer-listens ALIASES definition: chains,
// comma separated, whose outermost hop listens on the public address
// itself (server side).
func (c *Config) AddOuterListensFlag(s string) error {
	return c.addOuterListens(strings.Split(s, ","), "--outer-listens "+s)
}

func (c *Config) addOuterListens(aliases []string, source string) error {
	return addNames(&c.OuterListens, "transport name", aliases, source)
}

// IsIndirect reports whether method's PT ignores the address it is given:
// a KnownIndirect method or one the configuration names.
func (c *Config) IsIndirect(method string) bool {
	return contains(KnownIndirect, method) || contains(c.Indirect, method)
}

// OutermostListens reports whether, on the bridge, ch's outermost hop is
// given ch's public address to listen on itself: it is indirect (it must),
// or ch is named by OuterListens (it may). Declared, never guessed.
func (c *Config) OutermostListens(ch Chain) bool {
	if len(ch.Hops) == 0 {
		return false
	}
	return c.IsIndirect(ch.Hops[len(ch.Hops)-1]) || contains(c.OuterListens, ch.Alias)
}

// CheckPlacement reports an indirect method anywhere but last in ch, for
// the client: CheckPlacementFor(ch, ClientRole).
func (c *Config) CheckPlacement(ch Chain) error { return c.CheckPlacementFor(ch, ClientRole) }

// CheckPlacementFor reports an indirect method anywhere but last in ch.
// On the client its PT would never connect to the next hop's shim, and
// every connection would wait for the setup timeout before failing; on the
// bridge its server listens on the public address itself, so no hop can
// be outside it.
func (c *Config) CheckPlacementFor(ch Chain, role Role) error {
	if len(ch.Hops) == 0 {
		return nil
	}
	why := "it reaches its own front, broker or URL instead of the address it is given, so nothing can follow it; it can only be the last hop of a chain"
	if role == ServerRole {
		why = "its server listens on the chain's public address itself (its CDN, proxies or web server reach it there), so no hop can be outside it; it can only be the last (outermost) hop of a chain"
	}
	var errs []error
	for i, m := range ch.Hops[:len(ch.Hops)-1] {
		if c.IsIndirect(m) {
			errs = append(errs, fmt.Errorf("hop %d %q is an indirect PT: %s (%s)", i, m, why, ch.Source))
		}
	}
	return errors.Join(errs...)
}

// Merge adds o's definitions to c. Conflicts are reported by Validate.
func (c *Config) Merge(o *Config) {
	c.Plugins = append(c.Plugins, o.Plugins...)
	c.Chains = append(c.Chains, o.Chains...)
	addNames(&c.Indirect, "method name", o.Indirect, "")            // checked when o was built
	addNames(&c.OuterListens, "transport name", o.OuterListens, "") // likewise
	for alias, args := range o.ServerOptions {
		if c.ServerOptions == nil {
			c.ServerOptions = make(map[string]metadata.Args)
		}
		if c.ServerOptions[alias] == nil {
			c.ServerOptions[alias] = make(metadata.Args)
		}
		for k, vs := range args {
			c.ServerOptions[alias][k] = append(c.ServerOptions[alias][k], vs...)
		}
	}
}

// Validate checks that no method is offered by two programs and that no
// alias is defined twice with different chains; it reports every problem at
// once. A chain whose methods no program offers is not a configuration
// error: it fails on its own when tor asks for it (CheckChain).
func (c *Config) Validate() error {
	var errs []error
	owner := map[string]Plugin{}
	for _, p := range c.Plugins {
		for _, m := range p.Methods {
			if o, dup := owner[m]; dup && !o.same(p) {
				what := "two programs"
				if o.Kind != p.Kind {
					what = "two kinds of plugin"
				}
				errs = append(errs, fmt.Errorf("method %q is offered by %s: %s (%s) and %s (%s); ptcombiner never chooses one silently", m, what, o.describe(), o.Source, p.describe(), p.Source))
				continue
			}
			owner[m] = p
		}
	}
	seen := map[string]Chain{}
	for _, ch := range c.Chains {
		if o, dup := seen[ch.Alias]; dup && o.String() != ch.String() {
			errs = append(errs, fmt.Errorf("alias %q is defined twice: %s (%s) and %s (%s)", ch.Alias, o, o.Source, ch, ch.Source))
			continue
		}
		seen[ch.Alias] = ch
	}
	for alias := range c.ServerOptions {
		if _, ok := c.Lookup(alias); !ok {
			errs = append(errs, fmt.Errorf("ServerTransportOptions for %q, which is no alias or method", alias))
		}
	}
	for _, alias := range c.OuterListens {
		if _, ok := c.Lookup(alias); !ok {
			errs = append(errs, fmt.Errorf("OuterListens %q, which is no alias or method", alias))
		}
	}
	return errors.Join(errs...)
}

// PluginFor returns the program that offers method.
func (c *Config) PluginFor(method string) (Plugin, bool) {
	for _, p := range c.Plugins {
		for _, m := range p.Methods {
			if m == method {
				return p, true
			}
		}
	}
	return Plugin{}, false
}

// Lookup returns the chain exposed to tor as name: an alias, or else a
// method offered by a program, as a chain of one hop (a single PT behind the
// combiner behaves like that PT).
func (c *Config) Lookup(name string) (Chain, bool) {
	for _, ch := range c.Chains {
		if ch.Alias == name {
			return ch, true
		}
	}
	if p, ok := c.PluginFor(name); ok {
		return Chain{Alias: name, Hops: []string{name}, Source: p.Source}, true
	}
	return Chain{}, false
}

// Names lists every name Lookup knows, sorted.
func (c *Config) Names() []string {
	set := map[string]bool{}
	for _, ch := range c.Chains {
		set[ch.Alias] = true
	}
	for _, p := range c.Plugins {
		for _, m := range p.Methods {
			set[m] = true
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// AllTransports is the TOR_PT_CLIENT_TRANSPORTS value that asks for every
// transport. PT 1.0 (pt-spec 3.2.2) no longer defines it, but older goptlib
// releases and the parents written for them read "*" as "every transport
// you support", and goptlib v1.6.0 hands it on as a name of its own.
const AllTransports = "*"

// Requested splits the transport names tor asked for into those this
// configuration serves, in tor's order and without repeats, and those it
// does not know, which pt-spec 3.2.2 says to skip: "PTs SHOULD ignore PT
// names that it does not recognize." AllTransports stands for every name
// Names lists.
func (c *Config) Requested(names []string) (serve, ignored []string) {
	seen := map[string]bool{}
	add := func(n string) {
		if !seen[n] {
			seen[n] = true
			serve = append(serve, n)
		}
	}
	for _, n := range names {
		switch _, ok := c.Lookup(n); {
		case n == AllTransports:
			for _, all := range c.Names() {
				add(all)
			}
		case ok:
			add(n)
		default:
			ignored = append(ignored, n)
		}
	}
	return serve, ignored
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// CheckChain reports why ch cannot run on the server with this
// configuration: CheckChainFor(ch, ServerRole).
func (c *Config) CheckChain(ch Chain) error { return c.CheckChainFor(ch, ServerRole) }

// CheckChainFor reports why ch cannot run for role with this
// configuration: a hop whose method no plugin offers. Each engine refuses,
// with its own reason, the kinds of hop it cannot run (the server: an
// unmanaged SOCKS5 PT).
func (c *Config) CheckChainFor(ch Chain, role Role) error {
	var errs []error
	for i, m := range ch.Hops {
		if _, ok := c.PluginFor(m); !ok {
			errs = append(errs, fmt.Errorf("hop %d %q is offered by no program; add --plugin %s=PATH or --builtin %s", i, m, m, m))
		}
	}
	return errors.Join(errs...)
}

func (r Role) String() string {
	if r == ServerRole {
		return "server"
	}
	return "client"
}
