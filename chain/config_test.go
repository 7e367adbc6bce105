package chain

import (
	"reflect"
	"strings"
	"testing"

	"github.com/ptcombiner/ptcombiner/metadata"
)

func TestSplitWords(t *testing.T) {
	good := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   # a comment", nil},
		{"a b\tc", []string{"a", "b", "c"}},
		{`Alias x 'a|b'`, []string{"Alias", "x", "a|b"}},
		{`exec "/opt/my pt/bin" -x "q\"uote"`, []string{"exec", "/opt/my pt/bin", "-x", `q"uote`}},
		{`a\ b c#d # e`, []string{"a b", "c#d"}},
		{`''`, []string{""}},
	}
	for _, tc := range good {
		got, err := SplitWords(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitWords(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`'open`, `"open`, `trailing\`} {
		if got, err := SplitWords(bad); err == nil {
			t.Errorf("SplitWords(%q) = %q, want an error", bad, got)
		}
	}
}

const sample = `# ptcombiner config: lines as in a torrc
ClientTransportPlugin obfs3,obfs4 exec /usr/bin/obfs4proxy
ServerTransportPlugin obfs3,obfs4 exec /usr/bin/obfs4proxy -enableLogging
ClientTransportPlugin snowflake exec /usr/bin/snowflake-client -url https://example.invalid/ -log "/var/log/snow flake.log"
Alias obfs3_obfs4 obfs3|obfs4
ServerTransportOptions obfs3_obfs4 1.iat-mode=1 cert=x
`

func TestParseRoles(t *testing.T) {
	cli, err := Parse(strings.NewReader(sample), "sample", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	if len(cli.Plugins) != 2 || cli.Plugins[1].Path != "/usr/bin/snowflake-client" ||
		!reflect.DeepEqual(cli.Plugins[1].Args, []string{"-url", "https://example.invalid/", "-log", "/var/log/snow flake.log"}) {
		t.Errorf("client plugins: %+v", cli.Plugins)
	}
	if cli.ServerOptions != nil {
		t.Errorf("client read server options: %v", cli.ServerOptions)
	}
	srv, err := Parse(strings.NewReader(sample), "sample", ServerRole)
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.Plugins) != 1 || !reflect.DeepEqual(srv.Plugins[0].Args, []string{"-enableLogging"}) {
		t.Errorf("server plugins: %+v", srv.Plugins)
	}
	if got := srv.ServerOptions["obfs3_obfs4"]; !reflect.DeepEqual(got, metadata.Args{"1.iat-mode": {"1"}, "cert": {"x"}}) {
		t.Errorf("server options: %v", got)
	}
	ch, ok := srv.Lookup("obfs3_obfs4")
	if !ok || ch.String() != "obfs3|obfs4" {
		t.Errorf("Lookup alias: %v %v", ch, ok)
	}
	if ch, ok := srv.Lookup("obfs4"); !ok || ch.String() != "obfs4" {
		t.Errorf("a method is a one-hop chain: %v %v", ch, ok)
	}
	if _, ok := srv.Lookup("snowflake"); ok {
		t.Errorf("server role must not know the client's snowflake")
	}
	if err := srv.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Bogus x", `sample:1: unknown directive "Bogus"`},
		{"ServerTransportPlugin obfs4 /usr/bin/obfs4proxy", "want ServerTransportPlugin NAMES exec PATH"},
		{"ServerTransportPlugin obfs-4 exec /x", `method name "obfs-4" is not a C identifier`},
		{"Alias a-b obfs4", `alias "a-b" is not a C identifier`},
		{"Alias ab obfs4||obfs3", `hop 1 "" is not a method name`},
		{"Alias ab", "want Alias ALIAS CHAIN"},
		{"\nAlias x 'a", "sample:2: unterminated single quote"},
		{"ServerTransportOptions x novalue", `option "novalue" is not K=V`},
	} {
		_, err := Parse(strings.NewReader(tc.in), "sample", ServerRole)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) error = %v, want it to contain %q", tc.in, err, tc.want)
		}
	}
}

func TestValidateConflicts(t *testing.T) {
	var c Config
	for _, p := range []string{"obfs4=/usr/bin/obfs4proxy", "obfs4,webtunnel=/usr/bin/lyrebird", "obfs3=/usr/bin/obfs4proxy"} {
		if err := c.AddPluginFlag(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, ch := range []string{"x=obfs3|obfs4", "x=obfs4|obfs3", "y=obfs4|nosuch"} {
		if err := c.AddChainFlag(ch); err != nil {
			t.Fatal(err)
		}
	}
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate: want errors")
	}
	for _, want := range []string{`method "obfs4" is offered by two programs`, `alias "x" is defined twice`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want %q", err, want)
		}
	}
	ch, _ := c.Lookup("y")
	if err := c.CheckChain(ch); err == nil || !strings.Contains(err.Error(), `hop 1 "nosuch" is offered by no program`) {
		t.Errorf("CheckChain = %v", err)
	}
	for _, bad := range []string{"noequals", "=path", "names="} {
		if err := c.AddPluginFlag(bad); err == nil {
			t.Errorf("AddPluginFlag(%q): want an error", bad)
		}
	}
	if err := c.AddChainFlag("nochain"); err == nil {
		t.Error("AddChainFlag without '=': want an error")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(sample)
	f.Add("Alias a 'b|c'\n")
	f.Add(`ClientTransportPlugin "a" exec "\`)
	f.Fuzz(func(t *testing.T, s string) {
		for _, role := range []Role{ClientRole, ServerRole} {
			c, err := Parse(strings.NewReader(s), "fuzz", role)
			if err != nil {
				continue
			}
			_ = c.Validate()
			for _, n := range c.Names() {
				ch, ok := c.Lookup(n)
				if !ok || len(ch.Hops) == 0 {
					t.Fatalf("name %q listed but not found", n)
				}
				for _, h := range ch.Hops {
					if !IsIdentifier(h) {
						t.Fatalf("hop %q is no identifier", h)
					}
				}
			}
		}
	})
}
