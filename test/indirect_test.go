package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
