package ptproc

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"

	"github.com/ptcombiner/ptcombiner/metadata"
)

// Keywords of the PT 1.0 stdout protocol (pt-spec.txt 3.3).
const (
	kwVersion      = "VERSION"
	kwVersionError = "VERSION-ERROR"
	kwEnvError     = "ENV-ERROR"
	kwProxyDone    = "PROXY"
	kwProxyError   = "PROXY-ERROR"
	kwCmethod      = "CMETHOD"
	kwCmethodError = "CMETHOD-ERROR"
	kwCmethodsDone = "CMETHODS"
	kwSmethod      = "SMETHOD"
	kwSmethodError = "SMETHOD-ERROR"
	kwSmethodsDone = "SMETHODS"
	kwLog          = "LOG"
	kwStatus       = "STATUS"
)

// ErrSyntax is wrapped by every parse error of this file.
var ErrSyntax = errors.New("malformed PT protocol line")

// Line is one stdout line of a managed proxy, split as tor splits it.
type Line struct {
	// Keyword is the first token.
	Keyword string
	// Args are the whitespace-separated tokens after the keyword.
	Args []string
	// Rest is the text after the keyword and the whitespace that follows
	// it, unsplit (LOG and STATUS carry quoted strings that contain spaces).
	Rest string
}

// isSpace is tor's TOR_ISSPACE, the separator of smartlist_split_string with
// SPLIT_SKIP_SPACE|SPLIT_IGNORE_BLANK, which handle_proxy_line uses.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'
}

// isKeywordByte reports whether c may appear in a keyword.
// pt-spec.txt 3.3: "Keyword ::= (<ALPHA> | <DIGIT> | "_" | "-")+".
func isKeywordByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// ParseLine parses one line (without its '\n'). pt-spec.txt 3.3:
// "<Line> ::= <Keyword> <OptArgs> <NL>", keywords "(<ALPHA> | <DIGIT> | "_"
// | "-")+", and "<ArgChar> ::= <any US-ASCII character but NUL or NL>".
// Like tor, tokens are separated by runs of whitespace, and leading and
// trailing whitespace is skipped.
func ParseLine(s string) (Line, error) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == 0 || c == '\n' || c >= 0x80 {
			return Line{}, fmt.Errorf("%w: byte 0x%02x at offset %d is not allowed", ErrSyntax, c, i)
		}
	}
	s = strings.TrimLeft(s, " \t\r\v\f")
	if s == "" {
		return Line{}, fmt.Errorf("%w: empty line", ErrSyntax)
	}
	end := 0
	for end < len(s) && !isSpace(s[end]) {
		end++
	}
	kw := s[:end]
	for i := 0; i < len(kw); i++ {
		if !isKeywordByte(kw[i]) {
			return Line{}, fmt.Errorf("%w: keyword %q has a forbidden byte 0x%02x", ErrSyntax, kw, kw[i])
		}
	}
	rest := strings.TrimRight(strings.TrimLeft(s[end:], " \t\r\v\f"), " \t\r\v\f")
	return Line{Keyword: kw, Args: strings.FieldsFunc(rest, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) }), Rest: rest}, nil
}

// isCIdentifier is tor's string_is_C_identifier: "[a-zA-Z_][a-zA-Z0-9_]*".
// PROTOCOLS.md A12: tor accepts only such transport names.
func isCIdentifier(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// parseAddrPort parses "ip:port" or "[ipv6]:port": an IP literal, never a
// host name, and a port in 1..65535 (PROTOCOLS.md A12, "IP literal, non-zero
// port").
func parseAddrPort(s string) (*net.TCPAddr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, fmt.Errorf("%w: address %q: %w", ErrSyntax, s, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("%w: address %q is not an IP literal: %w", ErrSyntax, s, err)
	}
	if port == "" || strings.TrimLeft(port, "0123456789") != "" {
		return nil, fmt.Errorf("%w: address %q: port is not a decimal number", ErrSyntax, s)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return nil, fmt.Errorf("%w: address %q: port must be in 1..65535", ErrSyntax, s)
	}
	return &net.TCPAddr{IP: ip.AsSlice(), Port: int(n), Zone: ip.Zone()}, nil
}

// Cmethod is a client transport offered by a CMETHOD line.
type Cmethod struct {
	Name string
	// Protocol is "socks4" or "socks5".
	Protocol string
	Addr     *net.TCPAddr
}

// ParseCmethod parses a CMETHOD line. pt-spec.txt 3.3.2:
// "CMETHOD <transport> <'socks4','socks5'> <address:port>". Like tor's
// parse_cmethod_line, extra tokens are ignored, the name must be a C
// identifier, and the address an IP literal with a non-zero port.
func ParseCmethod(l Line) (Cmethod, error) {
	if l.Keyword != kwCmethod {
		return Cmethod{}, fmt.Errorf("%w: keyword %q is not %s", ErrSyntax, l.Keyword, kwCmethod)
	}
	if len(l.Args) < 3 {
		return Cmethod{}, fmt.Errorf("%w: CMETHOD has %d arguments, wants <transport> <protocol> <address:port>", ErrSyntax, len(l.Args))
	}
	name := l.Args[0]
	if !isCIdentifier(name) {
		return Cmethod{}, fmt.Errorf("%w: CMETHOD transport name %q is not a C identifier", ErrSyntax, name)
	}
	proto := l.Args[1]
	if proto != "socks4" && proto != "socks5" {
		return Cmethod{}, fmt.Errorf("%w: CMETHOD %s: protocol %q is neither socks4 nor socks5", ErrSyntax, name, proto)
	}
	addr, err := parseAddrPort(l.Args[2])
	if err != nil {
		return Cmethod{}, fmt.Errorf("CMETHOD %s: %w", name, err)
	}
	return Cmethod{Name: name, Protocol: proto, Addr: addr}, nil
}

// Smethod is a server transport offered by an SMETHOD line.
type Smethod struct {
	Name string
	Addr *net.TCPAddr
	// Args are the ARGS: option's pairs, unescaped; empty (never nil) when
	// the option is absent or its list is empty.
	Args pt.Args
}

// ParseSmethod parses an SMETHOD line. pt-spec.txt 3.3.3:
// "SMETHOD <transport> <address:port> [options]", where "The ARGS are a
// comma-separated list of <key>=<value> pairs" given as "ARGS:<list>".
// Other options are ignored ("options" are extensible). An empty list
// ("ARGS:", as obfs4proxy prints for obfs3) is an empty Args. Two ARGS:
// options are an error, since which one tor would publish is unclear.
func ParseSmethod(l Line) (Smethod, error) {
	if l.Keyword != kwSmethod {
		return Smethod{}, fmt.Errorf("%w: keyword %q is not %s", ErrSyntax, l.Keyword, kwSmethod)
	}
	if len(l.Args) < 2 {
		return Smethod{}, fmt.Errorf("%w: SMETHOD has %d arguments, wants <transport> <address:port>", ErrSyntax, len(l.Args))
	}
	name := l.Args[0]
	if !isCIdentifier(name) {
		return Smethod{}, fmt.Errorf("%w: SMETHOD transport name %q is not a C identifier", ErrSyntax, name)
	}
	addr, err := parseAddrPort(l.Args[1])
	if err != nil {
		return Smethod{}, fmt.Errorf("SMETHOD %s: %w", name, err)
	}
	m := Smethod{Name: name, Addr: addr, Args: pt.Args{}}
	seen := false
	for _, opt := range l.Args[2:] {
		enc, ok := strings.CutPrefix(opt, "ARGS:")
		if !ok {
			continue
		}
		if seen {
			return Smethod{}, fmt.Errorf("%w: SMETHOD %s has more than one ARGS: option", ErrSyntax, name)
		}
		seen = true
		args, err := metadata.ParseSmethodArgs(enc)
		if err != nil {
			return Smethod{}, fmt.Errorf("%w: SMETHOD %s: %w", ErrSyntax, name, err)
		}
		m.Args = args
	}
	return m, nil
}

// Severity is the severity of a child's LOG line: one of the five constants
// below, the only values [ParseLog] returns. pt-spec.txt 3.3.4:
// "<Severity> ::= 'error' | 'warning' | 'notice' | 'info' | 'debug'".
type Severity string

// The severities of pt-spec.txt 3.3.4, spelt as on the wire.
const (
	SeverityError   Severity = "error"
	SeverityWarning Severity = "warning"
	SeverityNotice  Severity = "notice"
	SeverityInfo    Severity = "info"
	SeverityDebug   Severity = "debug"
)

// severityLevels maps every Severity onto the slog level its lines are
// logged at; a severity missing here is not one.
var severityLevels = map[Severity]slog.Level{
	SeverityError:   slog.LevelError,
	SeverityWarning: slog.LevelWarn,
	SeverityNotice:  slog.LevelInfo,
	SeverityInfo:    slog.LevelInfo - 2,
	SeverityDebug:   slog.LevelDebug,
}

// ParseLog parses a LOG line. pt-spec.txt 3.3.4:
// "LOG SEVERITY=<Severity> MESSAGE=<Message>", where "<Message> contains the
// log message which can be a String or CString". A CString is double-quoted
// with the escapes \n \t \r \\ \" \' and \NNN (octal), which goptlib's
// encodeCString uses for every byte outside printable ASCII. An unquoted
// MESSAGE runs to the end of the line, so a sloppy "MESSAGE=two words" is
// kept whole. The message is returned decoded but NOT sanitised: pass it
// through [Sanitize] before relaying it.
func ParseLog(l Line) (severity Severity, message string, err error) {
	if l.Keyword != kwLog {
		return "", "", fmt.Errorf("%w: keyword %q is not %s", ErrSyntax, l.Keyword, kwLog)
	}
	s := l.Rest
	if s == "" && len(l.Args) > 0 {
		s = strings.Join(l.Args, " ")
	}
	var haveSev, haveMsg bool
	var sevText string
	for {
		s = strings.TrimLeft(s, " \t\r\v\f")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		sp := strings.IndexAny(s, " \t\r\v\f")
		if eq < 0 || sp >= 0 && sp < eq {
			return "", "", fmt.Errorf("%w: LOG: token without '=' near %q", ErrSyntax, truncate(s, 32))
		}
		key := s[:eq]
		s = s[eq+1:]
		var value string
		if strings.HasPrefix(s, `"`) {
			v, n, err := unquoteCString(s)
			if err != nil {
				return "", "", fmt.Errorf("%w: LOG %s: %w", ErrSyntax, key, err)
			}
			value, s = v, s[n:]
			if s != "" && !isSpace(s[0]) {
				return "", "", fmt.Errorf("%w: LOG %s: text follows the closing quote", ErrSyntax, key)
			}
		} else if key == "MESSAGE" {
			value, s = strings.TrimRight(s, " \t\r\v\f"), ""
		} else {
			end := strings.IndexAny(s, " \t\r\v\f")
			if end < 0 {
				end = len(s)
			}
			value, s = s[:end], s[end:]
		}
		switch key {
		case "SEVERITY":
			if haveSev {
				return "", "", fmt.Errorf("%w: LOG: SEVERITY given twice", ErrSyntax)
			}
			haveSev, sevText = true, value
		case "MESSAGE":
			if haveMsg {
				return "", "", fmt.Errorf("%w: LOG: MESSAGE given twice", ErrSyntax)
			}
			haveMsg, message = true, value
		}
	}
	if !haveSev || !haveMsg {
		return "", "", fmt.Errorf("%w: LOG needs both SEVERITY= and MESSAGE=", ErrSyntax)
	}
	if _, ok := severityLevels[Severity(sevText)]; !ok {
		return "", "", fmt.Errorf("%w: LOG: unknown severity %q", ErrSyntax, truncate(sevText, 32))
	}
	return Severity(sevText), message, nil
}

// unquoteCString decodes the quoted string at the start of s and returns it
// and the number of bytes of s it took, closing quote included.
func unquoteCString(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			return b.String(), i + 1, nil
		case '\\':
			i++
			if i == len(s) {
				return "", 0, errors.New("unterminated escape")
			}
			switch e := s[i]; e {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case '\\', '"', '\'':
				b.WriteByte(e)
			case '0', '1', '2', '3', '4', '5', '6', '7':
				v, j := 0, i
				for ; j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7'; j++ {
					v = v*8 + int(s[j]-'0')
				}
				if v > 0xff {
					return "", 0, fmt.Errorf("octal escape \\%s is above \\377", s[i:j])
				}
				b.WriteByte(byte(v))
				i = j - 1
			default:
				return "", 0, fmt.Errorf("unknown escape \\%c", e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("no closing quote")
}

// MaxSanitized is the most bytes [Sanitize] returns.
const MaxSanitized = 512

// Sanitize makes text from a child safe to relay to tor or to a log: every
// byte outside printable ASCII (controls, NUL, CR, LF, tab, DEL, and bytes
// >= 0x80) becomes \xNN, a backslash becomes \\, and the result is at most
// [MaxSanitized] bytes, cut with "..." at an escape boundary. goptlib's
// formatline panics on bytes >= 0x80, NUL and LF in arguments, so all text
// of a child passes through here before it reaches goptlib.
func Sanitize(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '\\' {
			clean = false
			break
		}
	}
	if clean && len(s) <= MaxSanitized {
		return s
	}
	const hex = "0123456789abcdef"
	const ellipsis = "..."
	var b strings.Builder
	cut := 0 // length of b at the last piece boundary that leaves room for the ellipsis
	i := 0
	for ; i < len(s) && b.Len() <= MaxSanitized; i++ {
		if b.Len() <= MaxSanitized-len(ellipsis) {
			cut = b.Len()
		}
		switch c := s[i]; {
		case c == '\\':
			b.WriteString(`\\`)
		case c < 0x20 || c >= 0x7f:
			b.Write([]byte{'\\', 'x', hex[c>>4], hex[c&0xf]})
		default:
			b.WriteByte(c)
		}
	}
	if i == len(s) && b.Len() <= MaxSanitized {
		return b.String()
	}
	return b.String()[:cut] + ellipsis
}

// truncate bounds s for quoting in an error.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
