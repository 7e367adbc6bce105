package runner

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

func TestElideAddrs(t *testing.T) {
	for in, want := range map[string]string{
		"client 192.0.2.7:443 failed":           "client [scrubbed] failed",
		"bridge 203.0.113.5 down":               "bridge [scrubbed] down",
		"v6 [2001:db8::1]:443 and [::1]:9":      "v6 [scrubbed] and [::1]:9",
		"shim 127.0.0.1:4000 is ours":           "shim 127.0.0.1:4000 is ours",
		"no address here, version 1.2.3":        "no address here, version 1.2.3",
		"two 10.0.0.1:1->198.51.100.2:2 arrows": "two [scrubbed]->[scrubbed] arrows",
	} {
		if got := ElideAddrs(in); got != want {
			t.Errorf("ElideAddrs(%q) = %q, want %q", in, got, want)
		}
	}
}

// Warnings reach tor as LOG lines, sanitised, with their attributes; and the
// stderr handler sees addresses scrubbed.
func TestTorHandler(t *testing.T) {
	var stdout, stderr bytes.Buffer
	old := pt.Stdout
	pt.Stdout = &stdout
	defer func() { pt.Stdout = old }()
	log := slog.New(torHandler{next: elideHandler{slog.NewTextHandler(&stderr, nil)}, elide: true})
	log.Info("quiet", "k", "v")
	log.Warn("hop failed\nbadly \xff", "chain", "obfs3_obfs4", "peer", "192.0.2.1:443")
	out := stdout.String()
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "LOG SEVERITY=warning MESSAGE=") {
		t.Fatalf("LOG lines: %q", out)
	}
	for _, c := range out[:len(out)-1] {
		if c >= 0x80 || c < 0x20 {
			t.Fatalf("LOG line not sanitised: %q", out)
		}
	}
	if strings.Contains(out, "192.0.2.1") {
		t.Errorf("LOG line not scrubbed: %q", out)
	}
	if !strings.Contains(out, "chain=obfs3_obfs4") {
		t.Errorf("LOG line lacks the attributes: %q", out)
	}
	if strings.Contains(stderr.String(), "192.0.2.1") || !strings.Contains(stderr.String(), "[scrubbed]") {
		t.Errorf("stderr not scrubbed: %q", stderr.String())
	}
	if !strings.Contains(stderr.String(), "quiet") {
		t.Errorf("info line missing on stderr: %q", stderr.String())
	}
}
