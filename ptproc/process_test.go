package ptproc

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
	"go.uber.org/goleak"
)

// logBuf collects a test's log output.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// recorder collects OnLog and OnStatus calls.
type recorder struct {
	mu     sync.Mutex
	logs   []string
	status []string
	end    chan struct{} // closed on "STATUS END"
}

func (r *recorder) onLog(sev Severity, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, string(sev)+": "+msg)
}

func (r *recorder) onStatus(args string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = append(r.status, args)
	if args == "END" {
		close(r.end)
	}
}

func (r *recorder) snapshot() (logs, status []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.logs), slices.Clone(r.status)
}

// fakeSpec is a Spec running this test binary as the helper in mode.
func fakeSpec(t *testing.T, mode string, role Role, methods ...string) (Spec, *logBuf, *recorder) {
	t.Helper()
	t.Setenv(helperEnv, mode)
	// The race detector's runtime sleeps 1 s at exit by default, which
	// would make a fake child look slow to leave on stdin close.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	lb, rec := &logBuf{}, &recorder{end: make(chan struct{})}
	return Spec{
		Name:     "fake-" + mode,
		Path:     exe,
		Role:     role,
		Methods:  methods,
		StateDir: filepath.Join(t.TempDir(), "state"),
		Logger:   slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelInfo})),
		OnLog:    rec.onLog,
		OnStatus: rec.onStatus,
	}, lb, rec
}

// assertGone checks that pid names no process any more (reaped, not zombie).
func assertGone(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("bad pid %d", pid)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pid %d still exists after Close: kill(0) = %v", pid, err)
	}
}

func startOK(t *testing.T, s Spec) *Process {
	t.Helper()
	p, err := Start(context.Background(), s)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return p
}

func TestStartClient(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, lb, rec := fakeSpec(t, "client", Client, "a", "b", "c")
	p := startOK(t, s)
	ms := p.Methods()
	if len(ms) != 2 {
		t.Errorf("Methods = %v, want a and b", ms)
	}
	if m := ms["a"]; m.Protocol != "socks5" || m.Addr.String() != "127.0.0.1:1111" {
		t.Errorf("a = %+v", m)
	}
	if m := ms["b"]; m.Protocol != "socks4" || m.Addr.String() != "[::1]:2222" {
		t.Errorf("b = %+v", m)
	}
	ms["a"].Addr.Port = 1 // a copy: must not reach the Process
	if got := p.Methods()["a"].Addr.Port; got != 1111 {
		t.Errorf("Methods leaks internal state: port %d", got)
	}
	if got := p.MethodErrors(); got["c"] != "no such transport here" || len(got) != 1 {
		t.Errorf("MethodErrors = %q", got)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := p.ExitErr(); err != nil {
		t.Errorf("ExitErr = %v, want nil (exit on stdin close)", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	assertGone(t, p.Pid())
	logs, status := rec.snapshot()
	if want := []string{`notice: hello\x09world "q" \xc3\xa9`}; !slices.Equal(logs, want) {
		t.Errorf("OnLog got %q, want %q", logs, want)
	}
	// STDIN=EOF is printed after Close closed stdin: stdout is read to EOF.
	if want := []string{"TRANSPORT=a CONNECT=Success", "STDIN=EOF"}; !slices.Equal(status, want) {
		t.Errorf("OnStatus got %q, want %q", status, want)
	}
	if !strings.Contains(lb.String(), "protocol violation") {
		t.Errorf("CMETHOD after DONE not logged as a violation:\n%s", lb)
	}
	if _, ok := p.Methods()["late"]; ok {
		t.Error("CMETHOD after DONE was accepted")
	}
}

func TestStartServer(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, lb, _ := fakeSpec(t, "server", Server, "obfs4", "obfs3", "plain", "scramblesuit")
	p := startOK(t, s)
	defer p.Close()
	ms := p.ServerMethods()
	if len(ms) != 3 {
		t.Errorf("ServerMethods = %v", ms)
	}
	o4 := ms["obfs4"]
	if o4.Addr.String() != "127.0.0.1:1234" || !slices.Equal(o4.Args["cert"], []string{"abc,def"}) ||
		!slices.Equal(o4.Args["iat-mode"], []string{"0"}) || len(o4.Args) != 2 {
		t.Errorf("obfs4 = %+v", o4)
	}
	if o3 := ms["obfs3"]; o3.Args == nil || len(o3.Args) != 0 {
		t.Errorf("obfs3 ARGS: = %#v, want empty", o3.Args)
	}
	if pl := ms["plain"]; pl.Args == nil || len(pl.Args) != 0 || pl.Addr.String() != "[::1]:7" {
		t.Errorf("plain = %+v", pl)
	}
	if got := p.MethodErrors(); got["scramblesuit"] != "server not supported" {
		t.Errorf("MethodErrors = %q", got)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	assertGone(t, p.Pid())
	if !strings.Contains(lb.String(), "other role") {
		t.Errorf("CMETHOD from a server not logged:\n%s", lb)
	}
}

func TestStartProxy(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, _ := fakeSpec(t, "proxy-ok", Client, "a")
	s.ProxyURL = "socks5://127.0.0.1:9"
	p := startOK(t, s)
	if _, ok := p.Methods()["a"]; !ok {
		t.Error("no method a")
	}
	p.Close()
	assertGone(t, p.Pid())
}

func TestStartFailures(t *testing.T) {
	tests := []struct {
		mode    string
		role    Role
		proxy   string
		timeout time.Duration
		want    error
		wantMsg []string
	}{
		{mode: "env-error", want: ErrEnvError, wantMsg: []string{"no TOR_PT_FOO given"}},
		{mode: "version-error", want: ErrVersionError, wantMsg: []string{"no-version"}},
		{mode: "bad-version", want: ErrBadVersion, wantMsg: []string{`"2"`}},
		{mode: "before-version", want: ErrProtocol, wantMsg: []string{"CMETHOD line before VERSION"}},
		{mode: "exit-early", want: ErrExited, wantMsg: []string{"exit status 3", "cannot frobnicate"}},
		{mode: "hang", timeout: 300 * time.Millisecond, want: ErrStartTimeout, wantMsg: []string{"CMETHODS DONE"}},
		{mode: "hang", role: Server, timeout: 300 * time.Millisecond, want: ErrStartTimeout, wantMsg: []string{"SMETHODS DONE"}},
		{mode: "close-stdout", want: ErrStdoutClosed},
		{mode: "proxy-missing", proxy: "socks5://127.0.0.1:9", want: ErrNoProxyDone},
		{mode: "proxy-error", proxy: "socks5://127.0.0.1:9", want: ErrProxyError, wantMsg: []string{"cannot reach"}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			role := tt.role
			if role == 0 {
				role = Client
			}
			s, _, _ := fakeSpec(t, tt.mode, role, "a")
			s.ProxyURL, s.StartTimeout = tt.proxy, tt.timeout
			p, err := Start(context.Background(), s)
			if err == nil {
				p.Close()
				t.Fatal("Start succeeded")
			}
			if !errors.Is(err, tt.want) {
				t.Errorf("error %v is not %v", err, tt.want)
			}
			var se *StartError
			if !errors.As(err, &se) {
				t.Fatalf("error %v is not a *StartError", err)
			}
			assertGone(t, se.Pid)
			msg := err.Error()
			for _, w := range append(tt.wantMsg, "fake-"+tt.mode) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestStartNotRunnable(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "notexec")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want error
	}{
		{filepath.Join(dir, "missing"), fs.ErrNotExist},
		{notExec, fs.ErrPermission},
		{"ptproc-no-such-program-in-path", exec.ErrNotFound},
	}
	for _, tt := range tests {
		_, err := Start(context.Background(), Spec{Name: "x", Path: tt.path, Role: Client, Methods: []string{"a"}, StateDir: filepath.Join(dir, "st")})
		if !errors.Is(err, tt.want) {
			t.Errorf("Start(%s) = %v, want %v", tt.path, err, tt.want)
		}
		if err != nil && !strings.Contains(err.Error(), tt.path) {
			t.Errorf("error %q does not name the program", err)
		}
	}
}

func TestStartInvalidSpec(t *testing.T) {
	dir := t.TempDir()
	ok := Spec{Path: "/bin/true", Role: Client, Methods: []string{"a"}, StateDir: dir}
	tests := []struct {
		name string
		edit func(*Spec)
	}{
		{"no path", func(s *Spec) { s.Path = "" }},
		{"no role", func(s *Spec) { s.Role = 0 }},
		{"bad role", func(s *Spec) { s.Role = 7 }},
		{"no methods", func(s *Spec) { s.Methods = nil }},
		{"method with comma", func(s *Spec) { s.Methods = []string{"a,b"} }},
		{"method with dash", func(s *Spec) { s.Methods = []string{"a-b"} }},
		{"relative state", func(s *Spec) { s.StateDir = "state" }},
		{"negative timeout", func(s *Spec) { s.StartTimeout = -1 }},
		{"server field on client", func(s *Spec) { s.ORPort = "127.0.0.1:1" }},
		{"proxy on server", func(s *Spec) { s.Role = Server; s.ProxyURL = "socks5://127.0.0.1:1" }},
		{"options for unknown method", func(s *Spec) { s.Role = Server; s.Options = map[string]pt.Args{"b": {"k": {"v"}}} }},
		{"bindaddr for unknown method", func(s *Spec) { s.Role = Server; s.BindAddrs = map[string]string{"b": "127.0.0.1:1"} }},
		{"bad bindaddr", func(s *Spec) { s.Role = Server; s.BindAddrs = map[string]string{"a": "localhost:1"} }},
		{"newline in value", func(s *Spec) { s.ProxyURL = "socks5://x\n" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ok
			tt.edit(&s)
			if _, err := Start(context.Background(), s); !errors.Is(err, ErrSpec) {
				t.Errorf("Start = %v, want ErrSpec", err)
			}
		})
	}
}

func TestStartGarbage(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, lb, rec := fakeSpec(t, "garbage", Client, "good")
	p := startOK(t, s)
	ms := p.Methods()
	if _, ok := ms["good"]; !ok || len(ms) != 1 {
		t.Errorf("Methods = %v, want only good", ms)
	}
	errs := p.MethodErrors()
	for _, name := range []string{"bad-name", "x", "y", "z"} {
		if !strings.HasPrefix(errs[name], "malformed CMETHOD line") {
			t.Errorf("MethodErrors[%s] = %q", name, errs[name])
		}
	}
	if errs["v"] != `\x01bell` {
		t.Errorf("MethodErrors[v] = %q", errs["v"])
	}
	for name, msg := range errs {
		checkPrintable(t, name+" "+msg)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	assertGone(t, p.Pid())
	logs, status := rec.snapshot()
	if want := []string{`notice: caf\xc3\xa9 \x01`}; !slices.Equal(logs, want) {
		t.Errorf("OnLog got %q, want %q", logs, want)
	}
	if len(status) != 0 {
		t.Errorf("a non-ASCII STATUS line was relayed: %q", status)
	}
	out := lb.String()
	for _, w := range []string{"longer than the limit", "malformed LOG line", "other role", "PROXY DONE although"} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %q", w)
		}
	}
	checkPrintable(t, out)
}

// checkPrintable fails when s has a byte >= 0x80 or a control other than LF.
func checkPrintable(t *testing.T, s string) {
	t.Helper()
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x7f || c < 0x20 && c != '\n' {
			t.Errorf("byte 0x%02x at %d in %q", c, i, truncate(s[max(0, i-20):], 60))
			return
		}
	}
}

func TestStderrSpam(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, _ := fakeSpec(t, "stderr-spam", Client, "a")
	p := startOK(t, s) // would time out if stderr were not drained
	if tail := p.StderrTail(); len(tail) != tailLines || tail[0] != strings.Repeat("e", 99) {
		t.Errorf("StderrTail has %d lines, first %q", len(tail), tail)
	}
	p.Close()
	assertGone(t, p.Pid())
}

func TestCloseKillsStubborn(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, _ := fakeSpec(t, "stubborn", Client, "a")
	p := startOK(t, s)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = p.Close() })
	}
	wg.Wait()
	for _, err := range errs {
		if !errors.Is(err, ErrKilled) {
			t.Errorf("Close = %v, want ErrKilled", err)
		}
	}
	var ee *exec.ExitError
	if err := p.ExitErr(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("ExitErr = %v, want killed", err)
	}
	assertGone(t, p.Pid())
}

// Start's ctx bounds the start only: cancelled once the child is up, it
// sends no signal, and the child ends on Close, by stdin EOF (the fake
// client says so and exits 0; SIGTERM would have killed it).
func TestContextAfterStartIsIgnored(t *testing.T) {
	defer goleak.VerifyNone(t)
	s, _, rec := fakeSpec(t, "client", Client, "a")
	ctx, cancel := context.WithCancel(context.Background())
	p, err := Start(ctx, s)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := p.ExitErr(); err != nil {
		t.Errorf("ExitErr = %v, want exit status 0 (stdin EOF, no signal)", err)
	}
	if _, status := rec.snapshot(); !slices.Contains(status, "STDIN=EOF") {
		t.Errorf("the child never saw stdin EOF: STATUS lines %q", status)
	}
	assertGone(t, p.Pid())
}

func TestEnvReachesChild(t *testing.T) {
	defer goleak.VerifyNone(t)
	t.Setenv("TOR_PT_INHERITED", "from-tor")
	t.Setenv("TOR_PT_CLIENT_TRANSPORTS", "bogus")
	s, _, rec := fakeSpec(t, "printenv", Client, "a", "b", "a")
	p := startOK(t, s)
	<-rec.end
	// The child blocks reading stdin: it is a pipe (checked by the child)
	// that stays open until Close.
	if err := syscall.Kill(p.Pid(), 0); err != nil {
		t.Errorf("child gone before Close: %v", err)
	}
	_, status := rec.snapshot()
	env := map[string]string{}
	for _, st := range status {
		if kv, ok := strings.CutPrefix(st, "ENV "); ok {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
	}
	want := map[string]string{
		"TOR_PT_MANAGED_TRANSPORT_VER": "1",
		"TOR_PT_STATE_LOCATION":        s.StateDir,
		"TOR_PT_EXIT_ON_STDIN_CLOSE":   "1",
		"TOR_PT_CLIENT_TRANSPORTS":     "a,b",
		"PATH":                         Sanitize(os.Getenv("PATH")),
		helperEnv:                      "printenv",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("child's %s = %q, want %q", k, env[k], v)
		}
	}
	for k := range env {
		if strings.HasPrefix(k, "TOR_PT_") && want[k] == "" {
			t.Errorf("child inherited %s", k)
		}
	}
	if fi, err := os.Stat(s.StateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v %v", fi, err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := p.ExitErr(); err != nil {
		t.Errorf("ExitErr = %v, want nil (graceful exit on stdin EOF)", err)
	}
	if _, status = rec.snapshot(); status[len(status)-1] != "STDIN=EOF" {
		t.Errorf("last status %q", status[len(status)-1])
	}
	assertGone(t, p.Pid())
}
