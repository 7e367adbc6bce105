package test

// The Debian package end to end: `make deb` builds it, lintian finds no
// error in it, dpkg installs it, and a bridge and a client of a private Tor
// network run the installed /usr/bin/ptcombiner-* from tors that run as user
// debian-tor, with their state in debian-tor's own directories, as Debian's
// tor service runs them. The package is purged at the end.

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	debName      = "ptcombiner"
	localProfile = "/etc/apparmor.d/local/system_tor" // the site-local part of Debian's tor profile
	includeLine  = "include if exists <abstractions/ptcombiner>"
)

// The Debian versions `git describe` maps to are valid and sort as the
// commits do.
func TestDebVersion(t *testing.T) {
	cases := []struct{ describe, count, want string }{
		{"9e56dbf", "107", "0~git107.9e56dbf"},
		{"9e56dbf-dirty", "107", "0~git107.9e56dbf+dirty"},
		{"v0.1.0-rc1", "", "0.1.0~rc1"},
		{"v0.1.0", "", "0.1.0"},
		{"v0.1.0-dirty", "", "0.1.0+dirty"},
		{"v0.1.0-3-gabc1234", "", "0.1.0+git3.abc1234"},
		{"v0.1.0-3-gabc1234-dirty", "", "0.1.0+git3.abc1234.dirty"},
		{"v0.1.0-rc1-2-gabc1234", "", "0.1.0~rc1+git2.abc1234"},
		{"release_2", "", "0~release.2"},
		{"dev", "", "0~dev"},
	}
	dpkg, _ := exec.LookPath("dpkg")
	for _, c := range cases {
		out, err := exec.Command("bash", "../packaging/deb/build.sh", "--version-of", c.describe, c.count).Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != c.want {
			t.Errorf("version of %q: %q (%v), want %q", c.describe, got, err, c.want)
		}
		if dpkg != "" {
			if out, err := exec.Command(dpkg, "--validate-version", c.want).CombinedOutput(); err != nil {
				t.Errorf("dpkg refuses %q: %s", c.want, out)
			}
		}
	}
	if dpkg == "" {
		return
	}
	order := []string{"0~git107.9e56dbf", "0.1.0~rc1", "0.1.0~rc1+git2.abc1234", "0.1.0", "0.1.0+git3.abc1234", "0.1.1"}
	for i := 1; i < len(order); i++ {
		if exec.Command(dpkg, "--compare-versions", order[i-1], "lt", order[i]).Run() != nil {
			t.Errorf("dpkg does not sort %s before %s", order[i-1], order[i])
		}
	}
}

func TestDebPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds, installs and runs the Debian package")
	}
	if os.Geteuid() != 0 {
		t.Skip("installs a Debian package and runs tor as debian-tor: needs root")
	}
	for _, p := range []string{"dpkg", "dpkg-deb", "dpkg-query", "make", "git"} {
		requireProgram(t, p)
	}
	obfs4proxy := requireProgram(t, "obfs4proxy")
	lintian := optionalProgram(t, "lintian")
	parser := optionalProgram(t, "apparmor_parser")
	torUser, err := user.Lookup("debian-tor") // made by Debian's tor package
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("no user debian-tor (Debian's tor package makes it): %v", err)
		}
		t.Skipf("no user debian-tor (Debian's tor package makes it): %v", err)
	}
	uid, _ := strconv.Atoi(torUser.Uid)
	gid, _ := strconv.Atoi(torUser.Gid)
	if st, _ := exec.Command("dpkg-query", "-W", "-f", "${Status}", debName).Output(); len(st) > 0 && !bytes.Contains(st, []byte("not-installed")) {
		t.Skipf("dpkg knows %s here already (%s): the test would replace and purge it", debName, st)
	}

	// Build and check.
	start := time.Now()
	build := exec.Command("make", "--no-print-directory", "deb", "BIN="+t.TempDir())
	build.Dir = ".."
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	deb := lines[len(lines)-1]
	t.Logf("make deb: %s in %v", filepath.Base(deb), time.Since(start).Round(100*time.Millisecond))
	if lintian != "" {
		out, err := exec.Command(lintian, "--fail-on", "error", "--info", "--pedantic", deb).CombinedOutput()
		t.Logf("lintian --info --pedantic (%v):\n%s", err, out)
		if err != nil {
			t.Fatal("lintian reports an error")
		}
	}

	// Install, and purge when the test ends (after its tors: cleanups run
	// last first), even if the installation fails half-way.
	profileBefore, profileErr := os.ReadFile(localProfile)
	t.Cleanup(func() {
		dpkgRun(t, "-P", debName)
		for _, f := range []string{"/usr/bin/ptcombiner-client", "/usr/bin/ptcombiner-server", "/etc/apparmor.d/abstractions/ptcombiner"} {
			if _, err := os.Stat(f); err == nil {
				t.Errorf("%s is still there after dpkg -P", f)
			}
		}
		after, err := os.ReadFile(localProfile)
		if (err == nil) != (profileErr == nil) || !bytes.Equal(after, profileBefore) {
			t.Errorf("%s after purge: %q (%v), before install: %q (%v)", localProfile, after, err, profileBefore, profileErr)
		}
	})
	dpkgRun(t, "-i", deb)
	checkInstalled(t)
	// Installing again (an upgrade, for dpkg) leaves the profile's one line.
	dpkgRun(t, "-i", deb)
	checkAppArmor(t, parser)
	// An administrator who deletes the line keeps it deleted through upgrades.
	if profileErr == nil {
		os.WriteFile(localProfile, profileBefore, 0o644)
	} else {
		os.Remove(localProfile)
	}
	dpkgRun(t, "-i", deb)
	if local, _ := os.ReadFile(localProfile); bytes.Contains(local, []byte(includeLine)) {
		t.Errorf("an upgrade put back the line the administrator deleted:\n%s", local)
	}

	// The network: authority and exit as the test's user; bridge and
	// client as debian-tor, each in a directory of its own.
	netStart := time.Now()
	n := startPrivNet(t)
	torDir := func(name string) string {
		dir, err := os.MkdirTemp("", "ptcombiner-deb-"+name+"-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			t.Fatal(err)
		}
		return dir
	}
	const alias = "obfs3_obfs4"
	flags := fmt.Sprintf("--plugin obfs3,obfs4=%s --chain %s=obfs3|obfs4", obfs4proxy, alias)
	bridge := startTorIn(t, "bridge", torDir("bridge"), append([]string{"User debian-tor", "Nickname bridge",
		"BridgeRelay 1", "PublishServerDescriptor 0", "ExitPolicy reject *:*",
		fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)), fmt.Sprintf("ExtORPort 127.0.0.1:%d", freePort(t)),
		fmt.Sprintf("ServerTransportPlugin %s exec /usr/bin/ptcombiner-server %s", alias, flags),
		fmt.Sprintf("ServerTransportListenAddr %s 127.0.0.1:%d", alias, freePort(t))}, n.relay...)...)
	bridgelines := bridge.waitFile(t, "bridgelines", 60*time.Second)
	n.waitBridgeKnowsRelays(t, bridge)
	t.Logf("network ready %v after its start", time.Since(netStart).Round(time.Second))

	socksPort := freePort(t)
	clientStart := time.Now()
	client := startTorIn(t, "client", torDir("client"), append([]string{"User debian-tor", "UseBridges 1",
		bridgeLine(t, bridgelines, alias), "ConfluxEnabled 0",
		fmt.Sprintf("ClientTransportPlugin %s exec /usr/bin/ptcombiner-client %s", alias, flags),
		fmt.Sprintf("SocksPort 127.0.0.1:%d", socksPort)}, n.common...)...)
	client.waitLog(t, "Bootstrapped 100% (done)", 150*time.Second)
	t.Logf("client bootstrapped to 100%% in %v", time.Since(clientStart).Round(100*time.Millisecond))
	n.fetchAll(t, socksPort, newRetryBudget(t, "a fetch through tor that failed", 0.5))

	for _, c := range []struct {
		tor  *torInstance
		prog string
	}{{bridge, "/usr/bin/ptcombiner-server"}, {client, "/usr/bin/ptcombiner-client"}} {
		pids := family(c.tor.cmd.Process.Pid)
		checkRunAs(t, c.tor.name, pids, uid, c.prog, obfs4proxy)
		c.tor.stop()
		if err := waitGone(pids[1:], eventCeiling); err != nil {
			t.Error(err)
		}
	}
	t.Logf("TestDebPackage: wall time %v", time.Since(start).Round(time.Second))
}

// optionalProgram is requireProgram for a check the test can do without
// outside CI: "" and a log line when name is not installed.
func optionalProgram(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		p, err = exec.LookPath("/usr/sbin/" + name) // apparmor_parser, when PATH lacks sbin
	}
	if err != nil {
		p = ""
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed, but CI must run this check: %v", name, err)
		}
		t.Logf("%s is not installed: its check is skipped", name)
	}
	return p
}

func dpkgRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("dpkg", args...).CombinedOutput(); err != nil {
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// checkInstalled checks the package's files: the programs (of the version
// git describes), man pages made from their flags, the guides.
func checkInstalled(t *testing.T) {
	t.Helper()
	describe, _ := exec.Command("git", "-C", "..", "describe", "--tags", "--always", "--dirty").Output()
	for _, prog := range []string{"ptcombiner-client", "ptcombiner-server"} {
		out, err := exec.Command("/usr/bin/"+prog, "--version").Output()
		if want := strings.TrimSpace(string(describe)); err != nil || !strings.Contains(string(out), want) {
			t.Errorf("/usr/bin/%s --version: %q (%v), want %q", prog, out, err, want)
		}
		page := gunzip(t, "/usr/share/man/man1/"+prog+".1.gz")
		for _, want := range []string{".TH " + prog + " 1", "\\fB--chain\\fP", "\\fB--plugin\\fP", ".SH SEE ALSO"} {
			if !strings.Contains(page, want) {
				t.Errorf("man page of %s lacks %q", prog, want)
			}
		}
	}
	for _, f := range []string{"README.md", "bridge.md", "client.md", "security.md", "performance.md", "copyright", "changelog.gz"} {
		if _, err := os.Stat("/usr/share/doc/ptcombiner/" + f); err != nil {
			t.Error(err)
		}
	}
}

func gunzip(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(b)
}

// checkAppArmor checks that Debian's tor profile now includes the package's
// rules and still compiles. No kernel here enforces it: apparmor_parser
// compiles it without loading it.
func checkAppArmor(t *testing.T, parser string) {
	t.Helper()
	local, _ := os.ReadFile(localProfile)
	if n := strings.Count("\n"+string(local), "\n"+includeLine+"\n"); n != 1 {
		t.Errorf("%s has %d lines %q, want 1:\n%s", localProfile, n, includeLine, local)
	}
	if _, err := os.Stat("/etc/apparmor.d/system_tor"); err != nil || parser == "" {
		t.Logf("system_tor not compiled (profile: %v; apparmor_parser: %q)", err, parser)
		return
	}
	if out, err := exec.Command(parser, "--skip-kernel-load", "--skip-cache", "/etc/apparmor.d/system_tor").CombinedOutput(); err != nil {
		t.Errorf("apparmor_parser cannot compile system_tor with the package's rules: %v\n%s", err, out)
	}
	out, err := exec.Command(parser, "--preprocess", "/etc/apparmor.d/system_tor").Output()
	for _, rule := range []string{"/usr/bin/ptcombiner-client Pix,", "/usr/bin/ptcombiner-server Pix,", "/usr/bin/obfs4proxy Pix,"} {
		if err != nil || !bytes.Contains(out, []byte(rule)) {
			t.Errorf("system_tor, preprocessed, lacks %q (%v)", rule, err)
		}
	}
}

// checkRunAs checks the processes of a tor's tree (tor first): all run as
// uid, and the combiner and the PT program run from their installed paths.
func checkRunAs(t *testing.T, name string, pids []int, uid int, progs ...string) {
	t.Helper()
	seen := map[string]bool{}
	for _, pid := range pids {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		seen[exe] = true
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, l := range strings.Split(string(status), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "Uid:" && f[1] != strconv.Itoa(uid) {
				t.Errorf("%s: pid %d (%s) runs as uid %s, not debian-tor's %d", name, pid, exe, f[1], uid)
			}
		}
	}
	for _, p := range progs {
		if !seen[p] {
			t.Errorf("%s: no process runs %s (processes: %v)", name, p, seen)
		}
	}
}
