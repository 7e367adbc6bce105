package test

// The fixed part of a private Tor network on loopback (../shared/docs/
// TOR-E2E.md, Level 2): a directory authority, an exit relay and a web
// server behind the exit. Bridges and clients join it with its torrc lines.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// privateNet is a running authority and exit, and the pages the exit
// reaches.
type privateNet struct {
	common     []string // torrc lines of every node
	relay      []string // torrc lines of every relay, bridges included (common among them)
	httpPort   int
	page, blob []byte
}

// startPrivateNet starts the web server, the authority and the exit; all end
// with the test.
func startPrivateNet(t *testing.T) *privateNet {
	t.Helper()
	requireProgram(t, "tor")
	gencert := requireProgram(t, "tor-gencert")
	n := &privateNet{page: []byte("<html><body>ptcombiner private network</body></html>\n"), blob: make([]byte, 2<<20)}
	rand.Read(n.blob)
	web, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.Write(n.page) })
	mux.HandleFunc("/blob", func(w http.ResponseWriter, r *http.Request) { w.Write(n.blob) })
	hs := &http.Server{Handler: mux}
	go hs.Serve(web)
	t.Cleanup(func() { hs.Close() })
	n.httpPort = web.Addr().(*net.TCPAddr).Port

	// The authority's keys and fingerprints.
	authDir, err := os.MkdirTemp("", "ptcombiner-tor-auth-")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(authDir, "keys"), 0o700)
	authOR, authDirPort := freePort(t), freePort(t)
	keys := func(name string) string { return filepath.Join(authDir, "keys", name) }
	cmd := exec.Command(gencert, "--create-identity-key", "-m", "12", "-a", fmt.Sprintf("127.0.0.1:%d", authDirPort),
		"-i", keys("authority_identity_key"), "-s", keys("authority_signing_key"), "-c", keys("authority_certificate"),
		"--passphrase-fd", "0")
	cmd.Stdin = strings.NewReader("\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(authDir)
		t.Fatalf("tor-gencert: %v\n%s", err, out)
	}
	certText, _ := os.ReadFile(keys("authority_certificate"))
	v3ident := ""
	for _, line := range strings.Split(string(certText), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "fingerprint" {
			v3ident = f[1]
		}
	}
	empty := filepath.Join(t.TempDir(), "empty-torrc")
	os.WriteFile(empty, nil, 0o600)
	out, err := exec.Command("tor", "--list-fingerprint", "--DataDirectory", authDir,
		"--ORPort", fmt.Sprint(authOR), "--defaults-torrc", empty, "-f", empty).Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fingerprint := "" // the last line: "<nickname> <fingerprint in groups of 4>"
	if f := strings.Fields(lines[len(lines)-1]); len(f) > 1 {
		fingerprint = strings.Join(f[1:], "")
	}
	if err != nil || v3ident == "" || len(fingerprint) != 40 {
		os.RemoveAll(authDir)
		t.Fatalf("fingerprints: v3ident %q, relay %q, %v\n%s", v3ident, fingerprint, err, out)
	}
	// Readable by every relay, a bridge that runs as another user included.
	shared, err := os.MkdirTemp("", "ptcombiner-tor-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o755)
	resolv := filepath.Join(shared, "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644)
	n.common = []string{"TestingTorNetwork 1", "PathsNeededToBuildCircuits 0.67",
		fmt.Sprintf("DirAuthority auth orport=%d no-v2 v3ident=%s 127.0.0.1:%d %s", authOR, v3ident, authDirPort, fingerprint)}
	n.relay = append([]string{"Address 127.0.0.1", "AssumeReachable 1", "SocksPort 0",
		"ServerDNSResolvConfFile " + resolv, "ServerDNSAllowBrokenConfig 1", "ServerDNSDetectHijacking 0"}, n.common...)

	startTorIn(t, "authority", authDir, append([]string{"Nickname auth",
		fmt.Sprintf("ORPort 127.0.0.1:%d", authOR), fmt.Sprintf("DirPort 127.0.0.1:%d", authDirPort),
		"AuthoritativeDirectory 1", "V3AuthoritativeDirectory 1", "ContactInfo ptcombiner-test",
		"TestingV3AuthInitialVotingInterval 5", "TestingV3AuthInitialVoteDelay 2", "TestingV3AuthInitialDistDelay 2",
		"V3AuthVotingInterval 10", "V3AuthVoteDelay 2", "V3AuthDistDelay 2", "V3AuthNIntervalsValid 2",
		"TestingDirAuthVoteExit *", "TestingDirAuthVoteGuard *", "TestingDirAuthVoteHSDir *",
		"TestingMinExitFlagThreshold 0", "ExitPolicy reject *:*"}, n.relay...)...)
	startTor(t, "exit", append([]string{"Nickname exit",
		fmt.Sprintf("ORPort 127.0.0.1:%d", freePort(t)), fmt.Sprintf("DirPort 127.0.0.1:%d", freePort(t)),
		"ExitRelay 1", "ExitPolicyRejectPrivate 0", "ExitPolicyRejectLocalInterfaces 0",
		"ExitPolicy accept 127.0.0.0/8:*", fmt.Sprintf("ExitPolicy accept *:%d", n.httpPort), "ExitPolicy reject *:*",
		"RefuseUnknownExits 0"}, n.relay...)...)
	return n
}

// waitBridgeReady waits until the bridge's cached consensus lists both
// relays with their microdescriptors: a client started earlier may not
// bootstrap (TOR-E2E.md).
func (n *privateNet) waitBridgeReady(t *testing.T, bridge *torInstance) {
	t.Helper()
	waitFor(t, "the bridge's consensus to list both relays", 120*time.Second, func() bool {
		cons, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdesc-consensus"))
		md1, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdescs"))
		md2, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdescs.new"))
		return bytes.Contains(cons, []byte("\nr auth ")) && bytes.Contains(cons, []byte("\nr exit ")) &&
			bytes.Count(append(md1, md2...), []byte("onion-key")) >= 2
	})
}

// fetchAll fetches the page and the 2 MiB blob through a client's SocksPort
// and checks them; fetches is the retry budget for tor's own timeouts.
func (n *privateNet) fetchAll(t *testing.T, socksPort int, fetches *retryBudget) {
	t.Helper()
	dialer, _ := proxy.SOCKS5("tcp", fmt.Sprintf("127.0.0.1:%d", socksPort), nil, proxy.Direct)
	hc := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialer.(proxy.ContextDialer).DialContext(ctx, network, addr)
		},
	}}
	defer hc.CloseIdleConnections()
	for path, want := range map[string][]byte{"/": n.page, "/blob": n.blob} {
		var got []byte
		err := fetches.run(t, 3, func() error {
			resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d%s", n.httpPort, path))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			got, err = io.ReadAll(resp.Body)
			return err
		})
		if err != nil {
			t.Fatalf("fetch %s: %v", path, err)
		}
		if sha256.Sum256(got) != sha256.Sum256(want) {
			t.Fatalf("fetch %s: %d bytes that differ from the %d served", path, len(got), len(want))
		}
	}
}
