package chain

import (
	"strings"
	"testing"
)

// The three kinds of plugin line, their flags, and the refusal of one
// method served two ways (issue 13: never a silent choice).
func TestPluginKinds(t *testing.T) {
	cfg, err := Parse(strings.NewReader(
		"ClientTransportPlugin obfs3,obfs4 builtin\n"+
			"ClientTransportPlugin snowflake socks5 127.0.0.1:9999\n"+
			"ClientTransportPlugin test exec "+testpt+"\n"+
			"ServerTransportPlugin obfs2 builtin\n"+
			"Alias mix obfs3|test|obfs4\n"), "c", ClientRole)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.AddBuiltinFlag("obfs2,obfs3"); err != nil {
		t.Fatal(err)
	}
	if err := cfg.AddPluginFlag("meek_lite=socks5:[::1]:7000"); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"obfs2": "builtin", "obfs3": "builtin", "obfs4": "builtin", "snowflake": "socks5 127.0.0.1:9999",
		"meek_lite": "socks5 [::1]:7000", "test": testpt}
	for m, w := range want {
		p, ok := cfg.PluginFor(m)
		if !ok || p.describe() != w {
			t.Errorf("PluginFor(%s) = %v %q, want %q", m, ok, p.describe(), w)
		}
	}
	builtins := 0
	for _, p := range cfg.Plugins {
		if p.Kind == BuiltinPlugin {
			builtins++
		}
	}
	if builtins != 1 {
		t.Errorf("%d builtin plugins, want one that holds every builtin method", builtins)
	}
}

func TestPluginKindErrors(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{"ClientTransportPlugin obfs4 builtin\nClientTransportPlugin obfs4 exec " + testpt + "\n", `method "obfs4" is offered by two kinds of plugin: builtin`},
		{"ClientTransportPlugin obfs4 socks5 127.0.0.1:1\nClientTransportPlugin obfs4 builtin\n", "two kinds of plugin"},
		{"ClientTransportPlugin a,b socks5 127.0.0.1:1\n", "serves one method"},
		{"ClientTransportPlugin a socks5 127.0.0.1\n", `SOCKS5 address "127.0.0.1"`},
		{"ClientTransportPlugin a socks5 127.0.0.1:0\n", "want HOST:PORT"},
		{"ClientTransportPlugin a socks4 127.0.0.1:1\n", "SOCKS4 PTs are not supported"},
		{"ClientTransportPlugin a builtin extra\n", "NAMES builtin"},
		{"ClientTransportPlugin a-b builtin\n", "not a C identifier"},
		{"ServerTransportPlugin a socks5 127.0.0.1:1\n", "NAMES exec PATH [ARGS...] or NAMES builtin"},
	} {
		cfg, err := Parse(strings.NewReader(tc.conf), "c", ClientRole)
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.conf, err, tc.want)
		}
	}
	var cfg Config
	for _, flag := range []string{"a,b=socks5:127.0.0.1:1", "a=socks5:nowhere", "a=socks5:"} {
		if err := cfg.AddPluginFlag(flag); err == nil {
			t.Errorf("--plugin %s accepted", flag)
		}
	}
	if err := cfg.AddBuiltinFlag("obfs4,"); err == nil {
		t.Error("--builtin obfs4, accepted")
	}
}
