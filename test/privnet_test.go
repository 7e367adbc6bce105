package test

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

// privNet is a private Tor network on loopback, offline (TOR-E2E.md, Level
// 2): a directory authority, an exit relay and the web server that clients
// fetch from through it. A test adds its bridge (relay lines) and clients
// (common lines).
type privNet struct {
	common []string // every node's torrc lines
	relay  []string // a relay's, common included
	page   []byte   // served at /
	blob   []byte   // 2 MiB of random bytes, served at /blob
	web    int      // the web server's port
}

// startPrivNet starts the authority, the exit and the web server; the test
// ends them.
func startPrivNet(t *testing.T) *privNet {
	t.Helper()
	requireProgram(t, "tor")
	gencert := requireProgram(t, "tor-gencert")
	n := &privNet{blob: make([]byte, 2<<20), page: []byte("<html><body>ptcombiner private network</body></html>\n")}
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
	n.web = web.Addr().(*net.TCPAddr).Port

	authDir, err := os.MkdirTemp("", "ptcombiner-tor-auth-")
	if err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(authDir, "keys")
	os.MkdirAll(keys, 0o700)
	authOR, authDirPort := freePort(t), freePort(t)
	cmd := exec.Command(gencert, "--create-identity-key", "-m", "12", "-a", fmt.Sprintf("127.0.0.1:%d", authDirPort),
		"-i", filepath.Join(keys, "authority_identity_key"), "-s", filepath.Join(keys, "authority_signing_key"),
		"-c", filepath.Join(keys, "authority_certificate"), "--passphrase-fd", "0")
	cmd.Stdin = strings.NewReader("\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tor-gencert: %v\n%s", err, out)
	}
	cert, _ := os.ReadFile(filepath.Join(keys, "authority_certificate"))
	v3ident := ""
	for _, line := range strings.Split(string(cert), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "fingerprint" {
			v3ident = f[1]
		}
	}
	if v3ident == "" {
		t.Fatalf("no v3ident in the authority's certificate:\n%s", cert)
	}
	fp := relayFingerprint(t, authDir, authOR)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o600)
	n.common = []string{"TestingTorNetwork 1", "PathsNeededToBuildCircuits 0.67",
		fmt.Sprintf("DirAuthority auth orport=%d no-v2 v3ident=%s 127.0.0.1:%d %s", authOR, v3ident, authDirPort, fp)}
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
		"ExitPolicy accept 127.0.0.0/8:*", fmt.Sprintf("ExitPolicy accept *:%d", n.web), "ExitPolicy reject *:*",
		"RefuseUnknownExits 0"}, n.relay...)...)
	return n
}

// relayFingerprint is the fingerprint of the relay whose keys are in dir
// (tor makes them when there are none), from tor --list-fingerprint.
func relayFingerprint(t *testing.T, dir string, orPort int) string {
	t.Helper()
	empty := filepath.Join(t.TempDir(), "empty-torrc")
	os.WriteFile(empty, nil, 0o600)
	out, err := exec.Command("tor", "--list-fingerprint", "--DataDirectory", dir,
		"--ORPort", fmt.Sprint(orPort), "--defaults-torrc", empty, "-f", empty).Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	fp := strings.Join(strings.Fields(lines[len(lines)-1])[1:], "")
	if err != nil || len(fp) != 40 {
		t.Fatalf("relay fingerprint %q: %v\n%s", fp, err, out)
	}
	return fp
}

// waitBridgeKnowsRelays waits until the bridge's cached consensus lists both
// relays with their microdescriptors: only then may a client start
// (TOR-E2E.md).
func (n *privNet) waitBridgeKnowsRelays(t *testing.T, bridge *torInstance) {
	t.Helper()
	waitFor(t, "the bridge's consensus to list both relays", 2*eventCeiling, func() bool {
		cons, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdesc-consensus"))
		md1, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdescs"))
		md2, _ := os.ReadFile(filepath.Join(bridge.dir, "cached-microdescs.new"))
		return bytes.Contains(cons, []byte("\nr auth ")) && bytes.Contains(cons, []byte("\nr exit ")) &&
			bytes.Count(append(md1, md2...), []byte("onion-key")) >= 2
	})
}

// fetchAll fetches the page and the blob through a client's SocksPort and
// checks both byte for byte; a fetch that fails is retried within fetches.
func (n *privNet) fetchAll(t *testing.T, socksPort int, fetches *retryBudget) {
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
			resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d%s", n.web, path))
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
