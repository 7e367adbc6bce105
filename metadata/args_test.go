package metadata

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseClientArgs(t *testing.T) {
	good := []struct {
		in   string
		want Args
	}{
		{"", Args{}},
		{"a=b", Args{"a": {"b"}}},
		{"a=b;c=d", Args{"a": {"b"}, "c": {"d"}}},
		{"a=", Args{"a": {""}}},
		{"a=b;a=c", Args{"a": {"b", "c"}}},
		{`a=b\;c`, Args{"a": {"b;c"}}},
		{`a\=b=c`, Args{"a=b": {"c"}}},
		{`a=b=c`, Args{"a": {"b=c"}}},
		{`a\\=b\\`, Args{`a\`: {`b\`}}},
		{"cert=AbC+/=;iat-mode=0", Args{"cert": {"AbC+/="}, "iat-mode": {"0"}}},
		{"1.cert=x;0.key=y", Args{"1.cert": {"x"}, "0.key": {"y"}}},
	}
	for _, tc := range good {
		got, err := ParseClientArgs(tc.in)
		if err != nil {
			t.Errorf("ParseClientArgs(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseClientArgs(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
	bad := []string{"a", "=b", "a=b;", "a=b;c", `a=b\`, `a\`, ";", "a=b;;c=d", "=", `\`}
	for _, in := range bad {
		if got, err := ParseClientArgs(in); err == nil {
			t.Errorf("ParseClientArgs(%q) = %v, want an error", in, got)
		}
	}
}

func TestEncodeClientArgsDeterministic(t *testing.T) {
	args := Args{"z": {"1"}, "a": {"x;y", `p\q`}, "k=v": {"="}}
	want := `a=x\;y;a=p\\q;k\=v=\=;z=1`
	for i := 0; i < 20; i++ { // map order varies between runs; output must not
		if got := EncodeClientArgs(args); got != want {
			t.Fatalf("EncodeClientArgs = %q, want %q", got, want)
		}
	}
	back, err := ParseClientArgs(want)
	if err != nil || !reflect.DeepEqual(back, args) {
		t.Fatalf("round trip: %v, %v", back, err)
	}
}

func TestSmethodArgs(t *testing.T) {
	good := []struct {
		in   string
		want Args
	}{
		{"", Args{}}, // obfs4proxy's "ARGS:" for obfs3: no bogus empty key
		{"cert=abc,iat-mode=0", Args{"cert": {"abc"}, "iat-mode": {"0"}}},
		{`cert=a\,b\=c\\d`, Args{"cert": {`a,b=c\d`}}},
		{"k=a;b", Args{"k": {"a;b"}}},
	}
	for _, tc := range good {
		got, err := ParseSmethodArgs(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseSmethodArgs(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"k", "=v", "k=v,", `k=v\`, ",k=v"} {
		if got, err := ParseSmethodArgs(in); err == nil {
			t.Errorf("ParseSmethodArgs(%q) = %v, want an error", in, got)
		}
	}
	if got := EncodeSmethodArgs(Args{"iat-mode": {"0"}, "cert": {"a,b=c"}}); got != `cert=a\,b\=c,iat-mode=0` {
		t.Errorf("EncodeSmethodArgs = %q", got)
	}
}

func TestServerTransportOptions(t *testing.T) {
	in := `scramblesuit:key=banana;automata:rule=110;automata:depth=3;a\:b:k\;=v\=`
	want := map[string]Args{
		"scramblesuit": {"key": {"banana"}},
		"automata":     {"rule": {"110"}, "depth": {"3"}},
		"a:b":          {"k;": {"v="}},
	}
	got, err := ParseServerTransportOptions(in)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("ParseServerTransportOptions = %v, %v; want %v", got, err, want)
	}
	enc := EncodeServerTransportOptions(want)
	if enc != `a\:b:k\;=v\=;automata:depth=3;automata:rule=110;scramblesuit:key=banana` {
		t.Errorf("EncodeServerTransportOptions = %q", enc)
	}
	if empty, err := ParseServerTransportOptions(""); err != nil || len(empty) != 0 {
		t.Errorf("empty options: %v %v", empty, err)
	}
	for _, bad := range []string{"a", "a:b", ":k=v", "a:=v", "a:k=v;", `a:k=v\`, "a:k=v;b"} {
		if got, err := ParseServerTransportOptions(bad); err == nil {
			t.Errorf("ParseServerTransportOptions(%q) = %v, want an error", bad, got)
		}
	}
}

func TestSplitHops(t *testing.T) {
	args := Args{"0.key": {"1"}, "1.cert": {"c=;\\"}, "iat-mode": {"0"}, "2.x": {"a", "b"}, "1.2.3": {"v"}}
	got, err := SplitHops(args, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []Args{
		{"key": {"1"}, "iat-mode": {"0"}},
		{"cert": {"c=;\\"}, "iat-mode": {"0"}, "2.3": {"v"}},
		{"x": {"a", "b"}, "iat-mode": {"0"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SplitHops = %v, want %v", got, want)
	}
	// Not hop prefixes: they stay whole and go to every hop.
	for _, key := range []string{"01.k", "a.b", ".k", "-1.k", "1a.k", "99999999999999999999.k"} {
		got, err := SplitHops(Args{key: {"v"}}, 2)
		if err != nil || got[0][key] == nil || got[1][key] == nil {
			t.Errorf("SplitHops(%q) = %v, %v; want the key on every hop", key, got, err)
		}
	}
	for _, tc := range []struct {
		key  string
		hops int
	}{{"2.k", 2}, {"1.", 3}, {"0.k", 0}} {
		if got, err := SplitHops(Args{tc.key: {"v"}}, tc.hops); err == nil {
			t.Errorf("SplitHops(%q, %d) = %v, want an error", tc.key, tc.hops, got)
		}
	}
	joined := JoinHops([]Args{{"key": {"1"}}, {"cert": {"x"}, "iat-mode": {"0"}}})
	if enc := EncodeSmethodArgs(joined); enc != "0.key=1,1.cert=x,1.iat-mode=0" {
		t.Errorf("JoinHops encoded = %q", enc)
	}
}

func TestSOCKS5Credentials(t *testing.T) {
	for _, n := range []int{0, 1, 254, 255, 256, 300, 509, 510} {
		s := strings.Repeat("k", n)
		user, pass, err := SOCKS5Credentials(s)
		if err != nil {
			t.Fatalf("len %d: %v", n, err)
		}
		switch {
		case n == 0:
			if user != nil || pass != nil {
				t.Errorf("len 0: want no credentials, got %q %q", user, pass)
			}
		case n <= 255:
			if string(user) != s || string(pass) != "\x00" {
				t.Errorf("len %d: user %d bytes, pass %q", n, len(user), pass)
			}
		default:
			if len(user) != 255 || len(pass) != n-255 {
				t.Errorf("len %d: user %d, pass %d bytes", n, len(user), len(pass))
			}
		}
		if got := JoinSOCKS5Credentials(user, pass); got != s {
			t.Errorf("len %d: join gives %d bytes", n, len(got))
		}
	}
	if _, _, err := SOCKS5Credentials(strings.Repeat("k", 511)); err == nil {
		t.Error("511 bytes: want ErrArgsTooLong")
	}
}
