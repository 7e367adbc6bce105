package test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
)

// rawCombiner is a combiner started by hand, so that a test controls its
// stdin and signals the way tor does.
type rawCombiner struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	pid     int // the combiner's own pid (not the wrapper's)
	lines   chan string
	methods map[string]string // alias -> address from CMETHOD/SMETHOD
	done    chan struct{}
}

// startRaw runs a combiner with the environment tor would give it. With
// wrapped, a shell stands between the test and the combiner, so that the
// test can kill the combiner's parent.
func startRaw(t *testing.T, spec ptproc.Spec, wrapped bool) *rawCombiner {
	t.Helper()
	var cmd *exec.Cmd
	if wrapped {
		cmd = exec.Command("sh", append([]string{"-c", `exec 3<&0; "$0" "$@" <&3 & wait`, spec.Path}, spec.Args...)...)
	} else {
		cmd = exec.Command(spec.Path, spec.Args...)
	}
	if spec.StateDir == "" {
		spec.StateDir = t.TempDir()
	}
	cmd.Env = ptproc.BuildEnv(os.Environ(), spec)
	// An os.Pipe rather than StdinPipe: exec.Cmd.Wait would close the write
	// end when the wrapper dies, and the test of parent death must see the
	// combiner notice its parent's death, not an EOF.
	pr, stdin, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = pr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	r := &rawCombiner{cmd: cmd, stdin: stdin, lines: make(chan string, 100), methods: map[string]string{}, done: make(chan struct{})}
	go func() {
		defer close(r.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case r.lines <- sc.Text():
			default: // nobody reads after DONE; keep draining
			}
		}
	}()
	go func() { cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-r.done
	})
	deadline := time.After(eventCeiling)
	for {
		select {
		case l, ok := <-r.lines:
			if !ok {
				t.Fatal("combiner closed stdout before DONE")
			}
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == "CMETHOD" {
				r.methods[f[1]] = f[3]
			}
			if len(f) >= 3 && f[0] == "SMETHOD" {
				r.methods[f[1]] = f[2]
			}
			if l == "CMETHODS DONE" || l == "SMETHODS DONE" {
				r.pid = cmd.Process.Pid
				if wrapped {
					kids := childPids(cmd.Process.Pid)
					if len(kids) != 1 {
						t.Fatalf("wrapper's children: %v", kids)
					}
					r.pid = kids[0]
				}
				return r
			}
		case <-deadline:
			t.Fatalf("no DONE within %v", eventCeiling)
		}
	}
}

// family is the combiner and every process below it.
func family(pid int) []int {
	out := []int{pid}
	for _, k := range childPids(pid) {
		out = append(out, family(k)...)
	}
	return out
}

// refuses reports whether connections to addr are refused: nothing listens
// there any more. A dial that times out says nothing either way.
func refuses(addr string) bool {
	probe, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		probe.Close()
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// Every way tor (or the system) ends a PT ends the combiner and all its PT
// children, on both sides, with real obfs4proxy children. How long it took
// is logged, not checked: the machine's load decides it.
func TestLifecycleEnds(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	ft := startFakeTor(t, "obfs3_obfs4")
	flags := []string{"--plugin", "obfs3,obfs4=" + obfs4proxy, "--chain", "obfs3_obfs4=obfs3|obfs4"}
	specs := map[string]ptproc.Spec{
		"client": {Path: bin("ptcombiner-client"), Args: flags, Role: ptproc.Client, Methods: []string{"obfs3_obfs4"}},
		"server": {Path: bin("ptcombiner-server"), Args: flags, Role: ptproc.Server, Methods: []string{"obfs3_obfs4"},
			ExtORPort: ft.addr, AuthCookieFile: ft.cookiePath},
	}
	for _, how := range []string{"stdin-eof", "sigterm", "sigint-twice", "parent-death"} {
		for _, side := range []string{"client", "server"} {
			t.Run(side+"/"+how, func(t *testing.T) {
				r := startRaw(t, specs[side], how == "parent-death")
				pids := family(r.pid)
				if len(pids) < 2 {
					t.Fatalf("combiner %d runs no PT child: %v", r.pid, pids)
				}
				switch how {
				case "stdin-eof":
					r.stdin.Close()
				case "sigterm":
					syscall.Kill(r.pid, syscall.SIGTERM)
				case "sigint-twice":
					syscall.Kill(r.pid, syscall.SIGINT)
					// The second SIGINT comes once the first was handled:
					// the listener is closed.
					waitFor(t, "the listener to close after the first SIGINT", eventCeiling, func() bool { return refuses(r.methods[specs[side].Methods[0]]) })
					syscall.Kill(r.pid, syscall.SIGINT)
				case "parent-death":
					syscall.Kill(r.cmd.Process.Pid, syscall.SIGKILL)
				}
				ended := time.Now()
				if err := waitGone(pids, eventCeiling); err != nil {
					t.Error(err)
				}
				t.Logf("%d processes ended %v after the %s", len(pids), time.Since(ended).Round(time.Millisecond), how)
			})
		}
	}
}

// The first SIGINT closes the listener and lets open connections finish.
func TestLifecycleDrain(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	echo := echoServer(t)
	bridge, args := serverChain(t, echo, []serverHop{{path: obfs4proxy, method: "obfs4"}, {path: obfs4proxy, method: "obfs4"}})
	r := startRaw(t, ptproc.Spec{Path: bin("ptcombiner-client"), Role: ptproc.Client, Methods: []string{"oo"},
		Args: []string{"--plugin", "obfs4=" + obfs4proxy, "--chain", "oo=obfs4|obfs4"}}, false)
	c := &combiner{methods: map[string]ptproc.Cmethod{}}
	addr, err := net.ResolveTCPAddr("tcp", r.methods["oo"])
	if err != nil {
		t.Fatalf("CMETHOD oo: %v (%v)", err, r.methods)
	}
	c.methods["oo"] = ptproc.Cmethod{Name: "oo", Protocol: "socks5", Addr: addr}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open, err := c.dial(ctx, "oo", bridge, args)
	if err != nil {
		t.Fatal(err)
	}
	pids := family(r.pid)
	syscall.Kill(r.pid, syscall.SIGINT)
	waitFor(t, "the SOCKS listener to close after SIGINT", eventCeiling, func() bool { return refuses(addr.String()) })
	if err := roundTrip(t, open, 1<<20); err != nil { // the open connection still works
		t.Fatalf("open connection after SIGINT: %v", err)
	}
	// It was the last connection: the combiner ends by itself.
	if err := waitGone(pids, eventCeiling); err != nil {
		t.Error(err)
	}
}
