package test

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
)

// Issue 12 item 4: stdin EOF or SIGTERM while a PT child hangs in its start
// (it never prints *METHODS DONE) ends the combiner and the child promptly,
// not after --start-timeout (10 minutes here); tor hears why the chain did
// not start before the combiner exits.
func TestLifecycleEndDuringChildStart(t *testing.T) {
	const ceiling = 30 * time.Second // far below the start timeout
	ft := startFakeTor(t, "test")
	hang := bin("testpt") + " -mode hang"
	specs := map[string]ptproc.Spec{
		"client": {Path: bin("ptcombiner-client"), Role: ptproc.Client, Methods: []string{"test"},
			Args: []string{"--start-timeout", "10m", "--config", writeConfig(t, "ClientTransportPlugin test exec "+hang+"\n")}},
		"server": {Path: bin("ptcombiner-server"), Role: ptproc.Server, Methods: []string{"test"},
			ExtORPort: ft.addr, AuthCookieFile: ft.cookiePath,
			Args: []string{"--start-timeout", "10m", "--config", writeConfig(t, "ServerTransportPlugin test exec "+hang+"\n")}},
	}
	for _, how := range []string{"stdin-eof", "sigterm"} {
		for _, side := range []string{"client", "server"} {
			t.Run(side+"/"+how, func(t *testing.T) {
				spec := specs[side]
				spec.StateDir = t.TempDir()
				cmd := exec.Command(spec.Path, spec.Args...)
				cmd.Env = ptproc.BuildEnv(os.Environ(), spec)
				stdin, err := cmd.StdinPipe()
				if err != nil {
					t.Fatal(err)
				}
				stdout, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				lines := make(chan []string, 1)
				go func() {
					var all []string
					for sc := bufio.NewScanner(stdout); sc.Scan(); {
						all = append(all, sc.Text())
					}
					lines <- all
				}()
				exited := make(chan struct{})
				go func() { cmd.Wait(); close(exited) }()
				t.Cleanup(func() {
					cmd.Process.Kill()
					<-exited
				})
				var kids []int
				for deadline := time.Now().Add(ceiling); len(kids) == 0; time.Sleep(20 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("the combiner started no PT child within %v", ceiling)
					}
					kids = childPids(cmd.Process.Pid)
				}
				pids := family(cmd.Process.Pid)
				if how == "stdin-eof" {
					stdin.Close()
				} else {
					syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
				}
				select {
				case <-exited:
				case <-time.After(ceiling):
					t.Fatalf("the combiner did not exit within %v of %s during its child's start", ceiling, how)
				}
				if err := waitGone(pids, ceiling); err != nil {
					t.Error(err)
				}
				out := strings.Join(<-lines, "\n")
				if !strings.Contains(out, "METHOD-ERROR test") || !strings.Contains(out, "start cancelled") {
					t.Errorf("tor was not told why the chain did not start: %q", out)
				}
			})
		}
	}
}
