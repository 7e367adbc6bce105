package chain

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodObfs4State = `{"node-id":"6bd7ab1b2d7d0b1e6d4b5d6a1c0e9f8a7b6c5d4e","private-key":"a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f","public-key":"","drbg-seed":"00112233445566778899aabbccddeeff0011223344556677","iat-mode":0}`

func TestCheckObfs4State(t *testing.T) {
	if err := checkObfs4State([]byte(goodObfs4State)); err != nil {
		t.Fatalf("a whole state: %v", err)
	}
	for _, bad := range []string{"", "{", goodObfs4State[:40], "null", `{"node-id":"00"}`,
		strings.Replace(goodObfs4State, `"drbg-seed":"00`, `"drbg-seed":"zz`, 1),
		strings.Replace(goodObfs4State, `6bd7ab1b`, ``, 1)} {
		if checkObfs4State([]byte(bad)) == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestRestoreState(t *testing.T) {
	write := func(t *testing.T, path, s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	read := func(t *testing.T, path string) string {
		t.Helper()
		b, _ := os.ReadFile(path)
		return string(b)
	}
	for _, tc := range []struct {
		name, state, lastGood string // "-": no such file
		want, wantMsg         string // the state file after restoreState
	}{
		{"first start", "-", "-", "-", ""},
		{"removed by the operator", "-", goodObfs4State, "-", ""},
		{"whole", goodObfs4State, "-", goodObfs4State, ""},
		{"damaged, no copy", "", "-", "", ""},
		{"damaged, copy damaged", "{", "{\"node", "{", ""},
		{"empty", "", goodObfs4State, goodObfs4State, "restored it from obfs4_state.json.last-good"},
		{"cut short", goodObfs4State[:50], goodObfs4State, goodObfs4State, "did not parse (50 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, obfs4StateFile)
			if tc.state != "-" {
				write(t, path, tc.state)
			}
			if tc.lastGood != "-" {
				write(t, path+lastGoodSuffix, tc.lastGood)
			}
			msg, err := restoreState(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, statErr := os.Stat(path); tc.want == "-" && statErr == nil {
				t.Errorf("a state file appeared")
			} else if tc.want != "-" && read(t, path) != tc.want {
				t.Errorf("state file %q, want %q", read(t, path), tc.want)
			}
			if (tc.wantMsg == "") != (msg == "") || !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message %q, want one with %q", msg, tc.wantMsg)
			}
		})
	}
}

func TestKeepState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, obfs4StateFile)
	if err := keepState(dir); err != nil { // no state: nothing kept
		t.Fatal(err)
	}
	if _, err := os.Stat(path + lastGoodSuffix); err == nil {
		t.Fatal("a copy of no state")
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := keepState(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + lastGoodSuffix); err == nil {
		t.Fatal("a damaged state was kept as the last good one")
	}
	if err := os.WriteFile(path, []byte(goodObfs4State), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := keepState(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path + lastGoodSuffix); string(b) != goodObfs4State {
		t.Fatalf("kept %q", b)
	}
	if fi, _ := os.Stat(path + lastGoodSuffix); fi.Mode().Perm() != 0o600 {
		t.Errorf("the copy's mode is %v: it holds the bridge's private key", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("files left in the state directory: %v", entries)
	}
}

// FuzzCheckObfs4State: any file content is judged without a panic, and
// what it accepts is a state obfs4 can load (three hex fields of their
// lengths).
func FuzzCheckObfs4State(f *testing.F) {
	for _, s := range []string{goodObfs4State, goodObfs4State[:60], "", "{}", "null", "[]", `{"node-id":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkObfs4State(b) != nil {
			return
		}
		var st obfs4State
		if err := json.Unmarshal(b, &st); err != nil || len(st.NodeID) != 40 || len(st.PrivateKey) != 64 || len(st.DrbgSeed) != 48 {
			t.Fatalf("accepted %q", b)
		}
	})
}
