// Package test holds the project's integration tests: real child processes,
// real tor and real obfs4proxy, all on loopback.
package test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binDir holds the binaries built once for the whole package by TestMain.
var binDir string

// binEnv hands binDir to a run of this test binary that a test starts (in
// a network namespace): that run uses the binaries instead of building them.
const binEnv = "PTCOMBINER_TEST_BIN"

// TestMain builds ptcombiner-client, ptcombiner-server, the test PT and the
// meek server (test/meekserver) once, so that every test runs the real
// programs a user would run.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if dir := os.Getenv(binEnv); dir != "" {
		binDir = dir
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "ptcombiner-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	// Children built with -race would sleep 1 s at exit; the tests measure
	// how fast processes go, so turn that off (children inherit it).
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	pkgs := []string{"../cmd/ptcombiner-client", "../cmd/ptcombiner-server", "../test/testpt", "../test/meekserver"}
	// The programs are built with the race detector for tests, without it
	// for benchmarks (or when PTCOMBINER_TEST_NORACE is set).
	flag.Parse()
	args := append([]string{"build", "-race", "-o", dir + "/"}, pkgs...)
	if b := flag.Lookup("test.bench"); (b != nil && b.Value.String() != "") || os.Getenv("PTCOMBINER_TEST_NORACE") != "" {
		args = append([]string{"build", "-o", dir + "/"}, pkgs...)
	}
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building test binaries:", err)
		return 1
	}
	return m.Run()
}

// bin returns the path of a binary built by TestMain.
func bin(name string) string { return filepath.Join(binDir, name) }

// requireProgram skips the test when an external program (tor, obfs4proxy)
// is not installed; .ci/run installs both, so CI never skips.
func requireProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed, but CI must run this test: %v", name, err)
		}
		t.Skipf("%s is not installed: %v", name, err)
	}
	return p
}
