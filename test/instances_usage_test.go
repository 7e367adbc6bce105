package test

import (
	"os/exec"
	"strings"
	"testing"
)

// --tor-extorport and --proxy-protocol say what is wrong with them: a
// value of the wrong form, --forward beside --tor-extorport, and
// --tor-extorport when tor runs the server (an ENV-ERROR).
func TestServerInstancesUsage(t *testing.T) {
	base := []string{"--builtin", "obfs4", "--listen", "obfs4=127.0.0.1:0", "--state-dir", t.TempDir()}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tor-extorport", "127.0.0.1:1"}, "want ADDR=COOKIEFILE"},
		{[]string{"--tor-extorport", "nowhere=/tmp/cookie"}, "--tor-extorport \"nowhere=/tmp/cookie\": address nowhere: missing port"},
		{[]string{"--tor-extorport", "127.0.0.1:1=/tmp/cookie", "--forward", "127.0.0.1:2"}, "--forward, --free and --tor-extorport: choose one"},
		{[]string{"--forward", "127.0.0.1:2", "--proxy-protocol", "10.0.0.0/33"}, `--proxy-protocol 10.0.0.0/33: "10.0.0.0/33" is neither a CIDR nor an IP address`},
	} {
		out, err := exec.Command(bin("ptcombiner-server"), append(base, tc.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%q: %v, %q; want %q", tc.args, err, out, tc.want)
		}
	}
	stdout, _ := runManagedFailure(t, "ptcombiner-server", []string{"--builtin", "obfs4", "--tor-extorport", "127.0.0.1:1=/tmp/cookie"})
	if !strings.HasPrefix(stdout, "ENV-ERROR ptcombiner-server: --tor-extorport is for a server run without tor") {
		t.Errorf("run by tor with --tor-extorport: %q", stdout)
	}
}
