package test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPtbench keeps `make ptbench` working, at a small size: every
// topology runs (the in-process chains and their floor too), with and
// without -ref-public, the ratios print, and held connections all live. It checks no figure: those belong to
// docs/performance.md, from a full run.
func TestPtbench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dozen processes")
	}
	build := exec.Command("go", "build", "-o", binDir+"/", "../test/ptbench")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building ptbench: %v\n%s", err, out)
	}
	pts := "test"
	if _, err := exec.LookPath("obfs4proxy"); err == nil {
		pts = "test,obfs4"
	}
	cmd := exec.Command(bin("ptbench"), "-bin", binDir, "-hops", "1,2", "-pts", pts,
		"-size", "2", "-setups", "20", "-idle", "30", "-hold", "300", "-links", "20ms,40ms@100", "-link-setups", "5", "-link-size", "1", "-link-stream-size", "1", "-streams", "2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ptbench: %v\n%s", err, out)
	}
	for _, want := range []string{"(d) raw TCP", "(c) relay, loop, test|test", "(c') relay, splice, test|test", "(a) combiners, test|test",
		"(a) test|test  ", "Over an emulated link of 20ms RTT between", "Over an emulated link of 40ms RTT, 100 Mbit/s", "(f) test|test ",
		"1 MiB each way for the single stream and 4 MiB for each of the 2", "setup under load", "opened 300 of 300", "300 of them carried a byte both ways, 0 did not"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ptbench output lacks %q:\n%s", want, out)
		}
	}
	if pts != "test" && !strings.Contains(string(out), "(b) obfs4|obfs4  ") {
		t.Errorf("ptbench output lacks the obfs4 chains:\n%s", out)
	}
	// The in-process chains (e), started with no child, and their floor
	// (g); against the reference when obfs4proxy is there.
	inproc := []string{"(e) in process, obfs4|obfs4", "(e) in process, obfs3|obfs4", "(g) floor, obfs4 alone",
		"(g) floor, obfs3 alone", "(e) obfs4|obfs4: 2 processes (0 children)", "(e) obfs3|obfs4: 2 processes (0 children)"}
	if pts != "test" {
		inproc = append(inproc, "(c) relay, loop, obfs3|obfs4", "setup p50", "RSS per idle conn")
	}
	for _, want := range inproc {
		if !strings.Contains(string(out), want) {
			t.Errorf("ptbench output lacks %q:\n%s", want, out)
		}
	}

	// -ref-public: the reference relays' server side gets a public listener.
	cmd = exec.Command(bin("ptbench"), "-bin", binDir, "-hops", "2", "-pts", "test", "-ref-public", "-inproc", "",
		"-size", "2", "-setups", "10", "-idle", "30", "-hold", "0", "-links", "")
	if out, err = cmd.CombinedOutput(); err != nil {
		t.Fatalf("ptbench -ref-public: %v\n%s", err, out)
	}
	for _, want := range []string{"own a public listener", "(c) relay, loop, test|test", "(c') relay, splice, test|test", "(a) test|test  "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ptbench -ref-public output lacks %q:\n%s", want, out)
		}
	}
}
