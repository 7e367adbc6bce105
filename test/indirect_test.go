package test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/shim"
)

// Under tor, a chain with an indirect PT anywhere but last is refused at
// start with a CMETHOD-ERROR that names it, whether the PT is a known one
// (meek_lite) or one the configuration names (--indirect, Indirect); the
// other chains are served.
func TestClientRefusesIndirectNotLast(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "ptcombiner.conf")
	if err := os.WriteFile(conf, []byte("Indirect testfront\nAlias tf testfront|test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCombiner(t, []string{"ml", "tm", "tf", "tx", "t2"},
		"--plugin", "meek_lite,obfs4,testfront,testx,test="+bin("testpt"),
		"--chain", "ml=meek_lite|obfs4", "--chain", "tm=test|meek_lite", "--chain", "tx=testx|test",
		"--chain", "t2=test|test", "--indirect", "testx", "--config", conf)
	for alias, method := range map[string]string{"ml": "meek_lite", "tf": "testfront", "tx": "testx"} {
		msg, ok := c.errs[alias]
		if !ok || !strings.Contains(msg, `"`+method+`" is an indirect PT`) || !strings.Contains(msg, "last hop") {
			t.Errorf("CMETHOD-ERROR %s: %q (present %v), want a refusal naming %s", alias, msg, ok, method)
		}
	}
	// Last, meek_lite is placed well: the test PT does not offer it, which
	// is another error.
	if msg := c.errs["tm"]; strings.Contains(msg, "indirect") {
		t.Errorf("tm=test|meek_lite refused for its placement: %q", msg)
	}
	if _, ok := c.methods["t2"]; !ok {
		t.Errorf("t2 not served: errors %v", c.errs)
	}
}

// A PT that grants the SOCKS request but never connects to the next hop's
// shim (the test PT's ignore-target mode, as an undeclared indirect PT
// placed first): tor's request is refused with TTL expired after
// --setup-timeout, and tor's log names that hop with the time waited.
func TestClientNamesHopThatNeverConnects(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "ptcombiner.conf")
	if err := os.WriteFile(conf, []byte(
		"ClientTransportPlugin testbad exec "+bin("testpt")+" -mode ignore-target\n"+
			"ClientTransportPlugin test exec "+bin("testpt")+"\n"+
			"Alias bad testbad|test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCombiner(t, []string{"bad"}, "--config", conf, "--setup-timeout", "2s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.dial(ctx, "bad", "127.0.0.1:1", nil)
	var re *shim.ReplyError
	if !errors.As(err, &re) || re.Code != shim.RepTTLExpired {
		t.Fatalf("dial: %v, want SOCKS reply TTL expired (0x06)", err)
	}
	line, err := c.logs.waitFor(10*time.Second, "hop 0 (testbad, ", "through hop 1's shim", "never connected to that shim in")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`never connected to that shim in ([0-9.]+m?s)`).FindStringSubmatch(line)
	if d, perr := time.ParseDuration(m[1]); perr != nil || d < 2*time.Second || d >= time.Minute {
		t.Errorf("waited %q: want the time really waited, at least --setup-timeout 2s: %s", m[1], line)
	}
}
