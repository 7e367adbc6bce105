package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ptcombiner/ptcombiner/ptproc"
)

// unmanagedPT runs a PT program's client side as someone else would, for
// ptcombiner-client to use as an unmanaged PT, and returns its SOCKS
// address for method.
func unmanagedPT(t *testing.T, path, method string) string {
	t.Helper()
	p, err := ptproc.Start(context.Background(), ptproc.Spec{Name: "unmanaged", Path: path, Role: ptproc.Client,
		Methods: []string{method}, StateDir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	t.Cleanup(func() { p.Close() })
	m, ok := p.Methods()[method]
	if !ok {
		t.Fatalf("%s does not offer %s: %v", path, method, p.MethodErrors())
	}
	return m.Addr.String()
}

// Through the ptcombiner-client binary, against obfs4proxy servers:
// in-process chains (--builtin, and the config line), chains that mix
// in-process hops with obfs4proxy children both ways, and an unmanaged
// obfs4proxy named by its SOCKS port, byte-exact. All-in-process and
// unmanaged-plus-in-process combiners start no child.
func TestClientKindsThroughBinary(t *testing.T) {
	obfs4proxy := requireProgram(t, "obfs4proxy")
	echo := echoServer(t)
	o34, o34args := serverChain(t, echo, []serverHop{{path: obfs4proxy, method: "obfs3"}, {path: obfs4proxy, method: "obfs4"}})
	o4, o4args := serverChain(t, echo, []serverHop{{path: obfs4proxy, method: "obfs4"}})
	// Only obfs3 inside obfs4proxy's obfs4 client meets its stall (1-4% of
	// setups, PROTOCOLS.md): at most one retry per four such cases.
	budget := newRetryBudget(t, "obfs4proxy's stall on obfs3 inside obfs4", 0.25)
	unmanagedConf := writeConfig(t, "ClientTransportPlugin obfs3 socks5 "+unmanagedPT(t, obfs4proxy, "obfs3")+
		"\nClientTransportPlugin obfs4 builtin\nAlias u obfs3|obfs4\n")
	for _, tc := range []struct {
		name     string
		flags    []string
		alias    string
		bridge   string
		sizes    []int
		children int
		stall    bool
	}{
		{"in-process obfs4", []string{"--builtin", "obfs4"}, "obfs4", "o4", []int{0, 1 << 20, 16 << 20}, 0, false},
		{"in-process obfs3|obfs4", []string{"--builtin", "obfs3,obfs4", "--chain", "c=obfs3|obfs4"}, "c", "o34", []int{0, 1 << 20}, 0, false},
		{"in-process obfs3, obfs4proxy obfs4", []string{"--builtin", "obfs3", "--plugin", "obfs4=" + obfs4proxy, "--chain", "c=obfs3|obfs4"}, "c", "o34", []int{0, 1 << 20}, 1, true},
		{"obfs4proxy obfs3, in-process obfs4", []string{"--plugin", "obfs3=" + obfs4proxy, "--builtin", "obfs4", "--chain", "c=obfs3|obfs4"}, "c", "o34", []int{0, 1 << 20}, 1, false},
		{"unmanaged obfs3, in-process obfs4 (config file)", []string{"--config", unmanagedConf}, "u", "o34", []int{0, 1 << 20}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCombiner(t, []string{tc.alias}, tc.flags...)
			bridge, args := o34, o34args
			if tc.bridge == "o4" {
				bridge, args = o4, o4args
			}
			for _, size := range tc.sizes {
				attempts := 1
				if tc.stall {
					attempts = 3
				}
				err := budget.run(t, attempts, func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					conn, err := c.dial(ctx, tc.alias, bridge, args)
					if err != nil {
						return err
					}
					conn.SetDeadline(time.Now().Add(60 * time.Second))
					return roundTrip(t, conn, size)
				})
				if err != nil {
					t.Fatalf("%d bytes: %v", size, err)
				}
			}
			if kids := childPids(c.proc.Pid()); len(kids) != tc.children {
				t.Errorf("ptcombiner-client runs %d children, want %d: %v", len(kids), tc.children, kids)
			}
		})
	}
}

// A builtin name that does not exist and an unmanaged PT that does not
// answer give their chains a CMETHOD-ERROR with the reason; the other
// chains are served, no child runs, and the combiner ends cleanly.
func TestClientKindStartErrors(t *testing.T) {
	c := startCombiner(t, []string{"obfs9", "b9", "dead", "bd", "obfs4"},
		"--builtin", "obfs4,obfs9", "--plugin", "dead=socks5:127.0.0.1:1", "--chain", "b9=obfs4|obfs9", "--chain", "bd=obfs4|dead")
	for name, want := range map[string]string{
		"obfs9": `hop 0 "obfs9" (in-process): transport: no builtin method "obfs9" (there are [obfs2 obfs3 obfs4 scramblesuit])`,
		"b9":    `hop 1 "obfs9" (in-process): transport: no builtin method "obfs9"`,
		"dead":  `hop 0 "dead": the unmanaged PT at 127.0.0.1:1 (--plugin dead=socks5:127.0.0.1:1) does not answer: dial tcp 127.0.0.1:1: connect: connection refused`,
		"bd":    `hop 1 "dead": the unmanaged PT at 127.0.0.1:1`,
	} {
		if !strings.Contains(c.errs[name], want) {
			t.Errorf("CMETHOD-ERROR %s = %q, want it to contain %q", name, c.errs[name], want)
		}
	}
	if _, ok := c.methods["obfs4"]; !ok {
		t.Errorf("obfs4 was not served: %v", c.errs)
	}
	pid := c.proc.Pid()
	if kids := childPids(pid); len(kids) != 0 {
		t.Errorf("children: %v, want none", kids)
	}
	c.proc.Close()
	if err := waitGone([]int{pid}, eventCeiling); err != nil {
		t.Error(err)
	}
}
