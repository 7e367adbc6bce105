package metadata

import (
	"reflect"
	"testing"
)

// Round trips: whatever parses must encode to a string that parses back to
// the same value, and encoding must be stable.
func FuzzClientArgsRoundTrip(f *testing.F) {
	for _, s := range []string{"", "a=b", `a=b\;c;d=\\`, "1.cert=x;iat-mode=0", `k\==v`, "a=b;a=c", `\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args, err := ParseClientArgs(s)
		if err != nil {
			return
		}
		enc := EncodeClientArgs(args)
		back, err := ParseClientArgs(enc)
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", enc, s, err)
		}
		if !reflect.DeepEqual(normalize(args), normalize(back)) {
			t.Fatalf("round trip of %q: %v != %v", s, args, back)
		}
		if EncodeClientArgs(back) != enc {
			t.Fatalf("encoding not stable for %q", s)
		}
	})
}

func FuzzSmethodArgsRoundTrip(f *testing.F) {
	for _, s := range []string{"", "cert=abc,iat-mode=0", `cert=a\,b`, "k=", `k=\\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args, err := ParseSmethodArgs(s)
		if err != nil {
			return
		}
		back, err := ParseSmethodArgs(EncodeSmethodArgs(args))
		if err != nil || !reflect.DeepEqual(normalize(args), normalize(back)) {
			t.Fatalf("round trip of %q: %v != %v (%v)", s, args, back, err)
		}
	})
}

func FuzzServerTransportOptions(f *testing.F) {
	for _, s := range []string{"", "obfs4:iat-mode=1", `a\:b:k=v;c:d=\;`, "x:1.k=v;x:k=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		opts, err := ParseServerTransportOptions(s)
		if err != nil {
			return
		}
		back, err := ParseServerTransportOptions(EncodeServerTransportOptions(opts))
		if err != nil || len(back) != len(opts) {
			t.Fatalf("round trip of %q: %v != %v (%v)", s, opts, back, err)
		}
		for name := range opts {
			if !reflect.DeepEqual(normalize(opts[name]), normalize(back[name])) {
				t.Fatalf("round trip of %q: %v != %v", s, opts, back)
			}
		}
	})
}

// FuzzSplitHops: every value lands on exactly the hops its key names, and
// the hop-specific part survives JoinHops then SplitHops.
func FuzzSplitHops(f *testing.F) {
	for _, s := range []string{"0.key=1;1.cert=x;iat-mode=0", "2.k=v", "01.k=v", "1.=v", "a.b=c"} {
		f.Add(s, 3)
	}
	f.Fuzz(func(t *testing.T, s string, hops int) {
		args, err := ParseClientArgs(s)
		if err != nil || hops < 1 || hops > 8 {
			return
		}
		per, err := SplitHops(args, hops)
		if err != nil {
			return
		}
		if len(per) != hops {
			t.Fatalf("got %d hops, want %d", len(per), hops)
		}
		total := 0
		for _, a := range per {
			for _, vs := range a {
				total += len(vs)
			}
		}
		want := 0
		for k, vs := range args {
			if _, _, ok := hopPrefix(k); ok {
				want += len(vs)
			} else {
				want += hops * len(vs)
			}
		}
		if total != want {
			t.Fatalf("values: got %d, want %d (%v -> %v)", total, want, args, per)
		}
		joined := JoinHops(per)
		again, err := SplitHops(joined, hops)
		if err != nil || !reflect.DeepEqual(normalize(again[0]), normalize(per[0])) {
			t.Fatalf("join/split of %v: %v (%v)", per, again, err)
		}
	})
}

func FuzzSOCKS5Credentials(f *testing.F) {
	f.Add("a=b")
	f.Add(string(make([]byte, 300)))
	f.Fuzz(func(t *testing.T, s string) {
		user, pass, err := SOCKS5Credentials(s)
		if err != nil {
			if len(s) <= MaxSOCKSArgsLen {
				t.Fatalf("%d bytes refused: %v", len(s), err)
			}
			return
		}
		if len(user) > 255 || len(pass) > 255 || (s != "" && (len(user) == 0 || len(pass) == 0)) {
			t.Fatalf("bad split: %d/%d", len(user), len(pass))
		}
		// A NUL-only remainder is indistinguishable from "no password" in
		// tor's encoding too; encoded args never end that way in practice.
		if got := JoinSOCKS5Credentials(user, pass); got != s && !(len(s) == 256 && s[255] == 0) {
			t.Fatalf("join(split(%q)) = %q", s, got)
		}
	})
}

// normalize treats a nil and an empty Args alike.
func normalize(a Args) Args {
	if len(a) == 0 {
		return Args{}
	}
	return a
}
