package ptproc

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseLine(t *testing.T) {
	tests := []struct {
		in      string
		kw      string
		args    []string
		rest    string
		wantErr bool
	}{
		{in: "VERSION 1", kw: "VERSION", args: []string{"1"}, rest: "1"},
		{in: "CMETHODS DONE", kw: "CMETHODS", args: []string{"DONE"}, rest: "DONE"},
		{in: "  CMETHOD  a\tsocks5 \t 1.2.3.4:5 \r", kw: "CMETHOD", args: []string{"a", "socks5", "1.2.3.4:5"}, rest: "a\tsocks5 \t 1.2.3.4:5"},
		{in: "X-Y_z9", kw: "X-Y_z9"},
		{in: `LOG MESSAGE="a b"`, kw: "LOG", args: []string{`MESSAGE="a`, `b"`}, rest: `MESSAGE="a b"`},
		{in: "", wantErr: true},
		{in: " \t ", wantErr: true},
		{in: "VER.SION 1", wantErr: true},
		{in: "VERSION 1\x00", wantErr: true},
		{in: "VERSION caf\xc3\xa9", wantErr: true},
		{in: "VERSION 1\nX", wantErr: true},
	}
	for _, tt := range tests {
		l, err := ParseLine(tt.in)
		if tt.wantErr {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseLine(%q) = %+v, %v; want ErrSyntax", tt.in, l, err)
			}
			continue
		}
		if err != nil || l.Keyword != tt.kw || !slices.Equal(l.Args, tt.args) || l.Rest != tt.rest {
			t.Errorf("ParseLine(%q) = %+v, %v", tt.in, l, err)
		}
	}
}

func mustLine(t testing.TB, s string) Line {
	t.Helper()
	l, err := ParseLine(s)
	if err != nil {
		t.Fatalf("ParseLine(%q): %v", s, err)
	}
	return l
}

func TestParseCmethod(t *testing.T) {
	tests := []struct {
		in, name, proto, addr string
	}{
		{"CMETHOD obfs4 socks5 127.0.0.1:1", "obfs4", "socks5", "127.0.0.1:1"},
		{"CMETHOD _x9 socks4 [2001:db8::1]:65535 extra", "_x9", "socks4", "[2001:db8::1]:65535"},
		{"CMETHOD meek_lite socks5 0.0.0.0:9050", "meek_lite", "socks5", "0.0.0.0:9050"},
		{"CMETHOD a socks5", "", "", ""},
		{"CMETHOD 9a socks5 127.0.0.1:1", "", "", ""},
		{"CMETHOD a-b socks5 127.0.0.1:1", "", "", ""},
		{"CMETHOD a http 127.0.0.1:1", "", "", ""},
		{"CMETHOD a socks5 localhost:1", "", "", ""},
		{"CMETHOD a socks5 127.0.0.1:0", "", "", ""},
		{"CMETHOD a socks5 127.0.0.1:65536", "", "", ""},
		{"CMETHOD a socks5 127.0.0.1:+1", "", "", ""},
		{"CMETHOD a socks5 127.0.0.1", "", "", ""},
		{"CMETHOD a socks5 ::1:1", "", "", ""},
		{"SMETHOD a 127.0.0.1:1", "", "", ""},
	}
	for _, tt := range tests {
		m, err := ParseCmethod(mustLine(t, tt.in))
		if tt.name == "" {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseCmethod(%q) = %+v, %v; want ErrSyntax", tt.in, m, err)
			}
			continue
		}
		if err != nil || m.Name != tt.name || m.Protocol != tt.proto || m.Addr.String() != tt.addr {
			t.Errorf("ParseCmethod(%q) = %+v, %v", tt.in, m, err)
		}
	}
}

func TestParseSmethod(t *testing.T) {
	tests := []struct {
		in, name, addr string
		args           map[string][]string
		wantErr        bool
	}{
		{in: `SMETHOD obfs4 127.0.0.1:1234 ARGS:cert=abc\,def,iat-mode=0`, name: "obfs4", addr: "127.0.0.1:1234",
			args: map[string][]string{"cert": {"abc,def"}, "iat-mode": {"0"}}},
		{in: "SMETHOD obfs3 127.0.0.1:1 ARGS:", name: "obfs3", addr: "127.0.0.1:1", args: map[string][]string{}},
		{in: "SMETHOD obfs2 [::1]:2", name: "obfs2", addr: "[::1]:2", args: map[string][]string{}},
		{in: `SMETHOD x 1.2.3.4:5 FUTURE:opt ARGS:k=a\=b\\c`, name: "x", addr: "1.2.3.4:5", args: map[string][]string{"k": {`a=b\c`}}},
		{in: "SMETHOD x 1.2.3.4:5 ARGS:k=v,k=w", name: "x", addr: "1.2.3.4:5", args: map[string][]string{"k": {"v", "w"}}},
		{in: "SMETHOD x 1.2.3.4:5 ARGS:k", wantErr: true},
		{in: `SMETHOD x 1.2.3.4:5 ARGS:k=v\`, wantErr: true},
		{in: "SMETHOD x 1.2.3.4:5 ARGS:=v", wantErr: true},
		{in: "SMETHOD x 1.2.3.4:5 ARGS:a=1 ARGS:b=2", wantErr: true},
		{in: "SMETHOD x", wantErr: true},
		{in: "SMETHOD x-y 1.2.3.4:5", wantErr: true},
		{in: "SMETHOD x example.com:5", wantErr: true},
	}
	for _, tt := range tests {
		m, err := ParseSmethod(mustLine(t, tt.in))
		if tt.wantErr {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseSmethod(%q) = %+v, %v; want ErrSyntax", tt.in, m, err)
			}
			continue
		}
		if err != nil || m.Name != tt.name || m.Addr.String() != tt.addr || m.Args == nil || len(m.Args) != len(tt.args) {
			t.Errorf("ParseSmethod(%q) = %+v, %v", tt.in, m, err)
			continue
		}
		for k, v := range tt.args {
			if !slices.Equal(m.Args[k], v) {
				t.Errorf("ParseSmethod(%q): %s = %q, want %q", tt.in, k, m.Args[k], v)
			}
		}
	}
}

func TestParseLog(t *testing.T) {
	tests := []struct {
		in      string
		sev     Severity
		msg     string
		wantErr bool
	}{
		{in: `LOG SEVERITY=notice MESSAGE="hello"`, sev: "notice", msg: "hello"},
		{in: `LOG MESSAGE="a b\tc\n\r\\\"\'" SEVERITY=debug`, sev: "debug", msg: "a b\tc\n\r\\\"'"},
		{in: `LOG SEVERITY=error MESSAGE="\303\251\0\101\1018"`, sev: "error", msg: "\xc3\xa9\x00AA8"},
		{in: `LOG SEVERITY=warning MESSAGE=two words here  `, sev: "warning", msg: "two words here"},
		{in: `LOG SEVERITY=info MESSAGE="" EXTRA=1`, sev: "info", msg: ""},
		{in: `LOG SEVERITY=info MESSAGE=`, sev: "info", msg: ""},
		{in: `LOG SEVERITY=info`, wantErr: true},
		{in: `LOG MESSAGE="x"`, wantErr: true},
		{in: `LOG SEVERITY=loud MESSAGE="x"`, wantErr: true},
		{in: `LOG SEVERITY=info MESSAGE="x`, wantErr: true},
		{in: `LOG SEVERITY=info MESSAGE="x\"`, wantErr: true},
		{in: `LOG SEVERITY=info MESSAGE="\400"`, wantErr: true},
		{in: `LOG SEVERITY=info MESSAGE="\q"`, wantErr: true},
		{in: `LOG SEVERITY=info MESSAGE="x"y`, wantErr: true},
		{in: `LOG SEVERITY=info SEVERITY=debug MESSAGE="x"`, wantErr: true},
		{in: `LOG junk SEVERITY=info MESSAGE="x"`, wantErr: true},
		{in: `LOG`, wantErr: true},
	}
	for _, tt := range tests {
		sev, msg, err := ParseLog(mustLine(t, tt.in))
		if tt.wantErr {
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("ParseLog(%q) = %q, %q, %v; want ErrSyntax", tt.in, sev, msg, err)
			}
			continue
		}
		if err != nil || sev != tt.sev || msg != tt.msg {
			t.Errorf("ParseLog(%q) = %q, %q, %v; want %q, %q", tt.in, sev, msg, err, tt.sev, tt.msg)
		}
	}
}

func TestSanitize(t *testing.T) {
	long := strings.Repeat("a", MaxSanitized)
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"", ""},
		{"tab\there", `tab\x09here`},
		{"nl\r\n", `nl\x0d\x0a`},
		{"nul\x00", `nul\x00`},
		{"caf\xc3\xa9", `caf\xc3\xa9`},
		{"del\x7f", `del\x7f`},
		{`back\slash`, `back\\slash`},
		{long, long},
		{long + "b", long[:MaxSanitized-3] + "..."},
		{strings.Repeat("a", MaxSanitized-4) + "\xff", strings.Repeat("a", MaxSanitized-4) + `\xff`},
		{strings.Repeat("a", MaxSanitized-3) + "\xff", strings.Repeat("a", MaxSanitized-3) + "..."},
		{strings.Repeat("\xff", 200), strings.Repeat(`\xff`, (MaxSanitized-3)/4) + "..."},
	}
	for _, tt := range tests {
		if got := Sanitize(tt.in); got != tt.want {
			t.Errorf("Sanitize(%q) = %q, want %q", truncate(tt.in, 40), truncate(got, 40), truncate(tt.want, 40))
		}
	}
}
