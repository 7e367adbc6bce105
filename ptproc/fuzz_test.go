package ptproc

import (
	"strings"
	"testing"
)

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{"VERSION 1", "  CMETHOD a\tsocks5 1.2.3.4:5 ", "", "X\x00", "caf\xc3\xa9", `LOG MESSAGE="a b"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLine(s)
		if err != nil {
			return
		}
		if l.Keyword == "" || strings.ContainsAny(l.Keyword, " \t") {
			t.Fatalf("bad keyword %q", l.Keyword)
		}
		// Re-joining the tokens with single spaces parses to the same line.
		again, err := ParseLine(strings.Join(append([]string{l.Keyword}, l.Args...), " "))
		if err != nil || again.Keyword != l.Keyword || strings.Join(again.Args, " ") != strings.Join(l.Args, " ") {
			t.Fatalf("%q: reparse %+v, %v", s, again, err)
		}
	})
}

func FuzzParseCmethod(f *testing.F) {
	for _, s := range []string{"CMETHOD a socks5 127.0.0.1:1", "CMETHOD a socks4 [::1]:65535", "CMETHOD a socks5 [fe80::1%eth0]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLine(s)
		if err != nil {
			return
		}
		m, err := ParseCmethod(l)
		if err != nil {
			return
		}
		if !isCIdentifier(m.Name) || m.Addr == nil || m.Addr.Port < 1 || m.Addr.Port > 65535 || m.Addr.IP == nil {
			t.Fatalf("%q: accepted %+v", s, m)
		}
	})
}

func FuzzParseSmethod(f *testing.F) {
	for _, s := range []string{
		`SMETHOD obfs4 127.0.0.1:1234 ARGS:cert=abc\,def,iat-mode=0`,
		"SMETHOD obfs3 127.0.0.1:1 ARGS:",
		"SMETHOD x [::1]:2 OPT ARGS:a=b,a=c",
		`SMETHOD x 1.2.3.4:5 ARGS:k=v\`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLine(s)
		if err != nil {
			return
		}
		m, err := ParseSmethod(l)
		if err != nil {
			return
		}
		if !isCIdentifier(m.Name) || m.Addr == nil || m.Addr.Port < 1 || m.Args == nil {
			t.Fatalf("%q: accepted %+v", s, m)
		}
		if _, ok := m.Args[""]; ok {
			t.Fatalf("%q: empty key accepted", s)
		}
	})
}

func FuzzParseLog(f *testing.F) {
	for _, s := range []string{
		`LOG SEVERITY=notice MESSAGE="hello"`,
		`LOG SEVERITY=error MESSAGE="\303\251\0\101\1018\n\t\r\\\"\'"`,
		`LOG SEVERITY=warning MESSAGE=two words`,
		`LOG SEVERITY=info MESSAGE="\400"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLine(s)
		if err != nil {
			return
		}
		sev, msg, err := ParseLog(l)
		if err != nil {
			return
		}
		if _, ok := severityLevels[sev]; !ok {
			t.Fatalf("%q: severity %q", s, sev)
		}
		checkPrintable(t, strings.ReplaceAll(Sanitize(msg), "\n", "?"))
	})
}

func FuzzSanitize(f *testing.F) {
	for _, s := range []string{"", "plain", "\x00\n\r\t\x7f\xff\\", strings.Repeat("\xff", 300), strings.Repeat("a", 600)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Sanitize(s)
		if len(got) > MaxSanitized {
			t.Fatalf("len %d > %d", len(got), MaxSanitized)
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c < 0x20 || c >= 0x7f {
				t.Fatalf("Sanitize(%q) = %q has byte 0x%02x", s, got, c)
			}
		}
		if len(s) <= MaxSanitized/4 && strings.HasSuffix(got, "...") && !strings.HasSuffix(s, "...") {
			t.Fatalf("short input %q was cut: %q", s, got)
		}
		if Sanitize(got) != got && !strings.Contains(got, `\`) {
			t.Fatalf("clean output %q not stable", got)
		}
	})
}
