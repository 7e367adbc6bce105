package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDemo keeps `make demo` working: the demo on the test PT, and on
// obfs4proxy when it is installed.
func TestDemo(t *testing.T) {
	variants := [][]string{{"-testpt"}}
	if _, err := exec.LookPath("obfs4proxy"); err == nil {
		variants = append(variants, nil)
	}
	for _, extra := range variants {
		args := append([]string{"run", "../test/demo", "-bin", binDir, "-conns", "2", "-size", "100000"}, extra...)
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "demo OK") || strings.Contains(string(out), "DOES NOT MATCH") {
			t.Errorf("demo %v: %v\n%s", extra, err, out)
		}
	}
}
