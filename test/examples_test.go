package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The two example programs against each other, byte-exact: examples/dial
// (in-process obfs3 inside obfs4proxy's obfs4) through examples/serve-chain
// (obfs3|obfs4 in process) to a TCP service that echoes what it gets and
// then closes, which ends dial. serve-chain ends on SIGTERM, with status 0.
func TestExamplesServeChainAndDial(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	dir := t.TempDir()
	build := exec.Command("go", "build", "-race", "-o", dir+"/", "../examples/serve-chain", "../examples/dial")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the examples: %v\n%s", err, out)
	}
	sizes := []int{0, 1, 64<<10 + 3, 1 << 20}
	payload := make([]byte, sizes[len(sizes)-1])
	for i := range payload {
		payload[i] = byte(rand.Uint32())
	}
	var size atomic.Int64 // of the case running
	service := serveLoopback(t, func(c *net.TCPConn) { io.CopyN(c, c, size.Load()) })

	serve := exec.Command(dir+"/serve-chain", "-forward", service, "-state-dir", t.TempDir())
	out, _ := serve.StdoutPipe()
	var serveErr syncBuffer
	serve.Stderr = &serveErr
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		serve.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("serve-chain's stderr:\n%s", tail(serveErr.String(), 20))
		}
	})
	sc := bufio.NewScanner(out)
	line := ""
	if sc.Scan() {
		line = sc.Text()
	}
	go func() { io.Copy(io.Discard, out); exited <- serve.Wait() }()
	f := strings.Fields(line) // CHAIN obfs3_obfs4 <addr> ARGS <args>
	if len(f) != 5 || f[0] != "CHAIN" || f[1] != "obfs3_obfs4" || !strings.HasPrefix(f[4], "1.cert=") {
		t.Fatalf("serve-chain printed %q", line)
	}

	// Only obfs3 inside obfs4proxy's obfs4 client meets its stall (1-4% of
	// setups, PROTOCOLS.md): dial then fails after obfs3's 30 s timeout.
	budget := newRetryBudget(t, "obfs4proxy's stall on obfs3 inside obfs4", 0.25)
	for _, n := range sizes {
		size.Store(int64(n))
		err := budget.run(t, 3, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dial := exec.CommandContext(ctx, dir+"/dial", "-bridge", f[2], "-args", f[4], "-obfs4proxy", obfs4proxy, "-wait", "1m")
			dial.Stdin = bytes.NewReader(payload[:n])
			var got bytes.Buffer
			var stderr strings.Builder
			dial.Stdout, dial.Stderr = &got, &stderr
			if err := dial.Run(); err != nil {
				return fmt.Errorf("dial: %v\n%s", err, tail(stderr.String(), 10))
			}
			if !bytes.Equal(got.Bytes(), payload[:n]) {
				return fmt.Errorf("%d bytes sent, %d back, not the same bytes", n, got.Len())
			}
			if s := fmt.Sprintf("%d bytes sent, %d received", n, n); !strings.Contains(stderr.String(), s) {
				return fmt.Errorf("dial's stats: %q, want %q", tail(stderr.String(), 1), s)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
	}

	serve.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Errorf("serve-chain after SIGTERM: %v", err)
		}
	case <-time.After(eventCeiling):
		t.Errorf("serve-chain still runs %v after SIGTERM", eventCeiling)
	}
}
