package ptproc

import (
	"slices"
	"testing"

	pt "gitlab.torproject.org/tpo/anti-censorship/pluggable-transports/goptlib"
)

func TestBuildEnv(t *testing.T) {
	parent := []string{"PATH=/bin", "TOR_PT_ORPORT=1.2.3.4:5", "HOME=/root", "TOR_PT_SERVER_BINDADDR=x-1.2.3.4:5", "TOR_PT_", "LANG=C"}
	tests := []struct {
		name string
		spec Spec
		want []string
	}{
		{
			name: "client",
			spec: Spec{Role: Client, Methods: []string{"obfs4", "obfs3", "obfs4"}, StateDir: "/s/c"},
			want: []string{"PATH=/bin", "HOME=/root", "LANG=C",
				"TOR_PT_MANAGED_TRANSPORT_VER=1", "TOR_PT_STATE_LOCATION=/s/c", "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
				"TOR_PT_CLIENT_TRANSPORTS=obfs4,obfs3"},
		},
		{
			name: "client with proxy and outbound binds",
			spec: Spec{Role: Client, Methods: []string{"a"}, StateDir: "/s", ProxyURL: "socks5://u:p@127.0.0.1:9",
				OutboundBindV4: "203.0.113.4", OutboundBindV6: "2001:db8::4"},
			want: []string{"PATH=/bin", "HOME=/root", "LANG=C",
				"TOR_PT_MANAGED_TRANSPORT_VER=1", "TOR_PT_STATE_LOCATION=/s", "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
				"TOR_PT_OUTBOUND_BIND_ADDRESS_V4=203.0.113.4", "TOR_PT_OUTBOUND_BIND_ADDRESS_V6=[2001:db8::4]",
				"TOR_PT_CLIENT_TRANSPORTS=a", "TOR_PT_PROXY=socks5://u:p@127.0.0.1:9"},
		},
		{
			name: "server minimal",
			spec: Spec{Role: Server, Methods: []string{"obfs4", "obfs3"}, StateDir: "/s",
				BindAddrs: map[string]string{"obfs3": "[::1]:4000"}},
			want: []string{"PATH=/bin", "HOME=/root", "LANG=C",
				"TOR_PT_MANAGED_TRANSPORT_VER=1", "TOR_PT_STATE_LOCATION=/s", "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
				"TOR_PT_SERVER_TRANSPORTS=obfs4,obfs3",
				"TOR_PT_SERVER_BINDADDR=obfs4-127.0.0.1:0,obfs3-[::1]:4000",
				"TOR_PT_EXTENDED_SERVER_PORT="},
		},
		{
			name: "server full",
			spec: Spec{Role: Server, Methods: []string{"obfs4"}, StateDir: "/s",
				Options:   map[string]pt.Args{"obfs4": {"iat-mode": {"1"}, "k;": {"a:b"}}},
				ORPort:    "127.0.0.1:9001",
				ExtORPort: "127.0.0.1:9002", AuthCookieFile: "/s/cookie"},
			want: []string{"PATH=/bin", "HOME=/root", "LANG=C",
				"TOR_PT_MANAGED_TRANSPORT_VER=1", "TOR_PT_STATE_LOCATION=/s", "TOR_PT_EXIT_ON_STDIN_CLOSE=1",
				"TOR_PT_SERVER_TRANSPORTS=obfs4",
				`TOR_PT_SERVER_TRANSPORT_OPTIONS=obfs4:iat-mode=1;obfs4:k\;=a\:b`,
				"TOR_PT_SERVER_BINDADDR=obfs4-127.0.0.1:0",
				"TOR_PT_ORPORT=127.0.0.1:9001",
				"TOR_PT_EXTENDED_SERVER_PORT=127.0.0.1:9002",
				"TOR_PT_AUTH_COOKIE_FILE=/s/cookie"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := BuildEnv(parent, tt.spec)
			if !slices.Equal(got, tt.want) {
				t.Errorf("BuildEnv =\n%q\nwant\n%q", got, tt.want)
			}
			if again := BuildEnv(parent, tt.spec); !slices.Equal(again, got) {
				t.Errorf("BuildEnv is not deterministic")
			}
		})
	}
}
