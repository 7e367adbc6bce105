package extorport

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteCookieFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cookie")
	first, err := WriteCookieFile(path)
	if err != nil {
		t.Fatal(err)
	}
	second, err := WriteCookieFile(path) // rewritten, as at every start
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(first, second) {
		t.Errorf("two cookies are equal")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 64 || len(CookieHeader) != 32 {
		t.Fatalf("file is %d bytes, header %d; want 64 and 32", len(data), len(CookieHeader))
	}
	if string(data[:32]) != "! Extended ORPort Auth Cookie !\n" || !bytes.Equal(data[32:], second) {
		t.Errorf("file = %q, want header + %x", data, second)
	}
	got, err := ReadCookieFile(path)
	if err != nil || !bytes.Equal(got, second) {
		t.Errorf("ReadCookieFile = %x, %v; want %x", got, err, second)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the cookie (temp files left behind?)", len(entries))
	}
}

func TestWriteCookieFileNoDir(t *testing.T) {
	_, err := WriteCookieFile(filepath.Join(t.TempDir(), "missing", "cookie"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error = %v, want ErrNotExist", err)
	}
}

func TestReadCookieFile(t *testing.T) {
	cookie := bytes.Repeat([]byte{0xab}, 32)
	tests := []struct {
		name    string
		data    []byte
		wantErr error
	}{
		{"good", append([]byte(CookieHeader), cookie...), nil},
		{"empty", nil, ErrBadCookie},
		{"header only", []byte(CookieHeader), ErrBadCookie},
		{"63 bytes", append([]byte(CookieHeader), cookie[:31]...), ErrBadCookie},
		{"65 bytes", append(append([]byte(CookieHeader), cookie...), '\n'), ErrBadCookie},
		{"wrong header", append([]byte("! Extended ORPort Auth Cookie !\x0b"), cookie...), ErrBadCookie},
		{"control port header", append([]byte("! Safe Cookie Authentication !\x0a\x00"), cookie...), ErrBadCookie},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cookie")
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := ReadCookieFile(path)
			if tt.wantErr == nil {
				if err != nil || !bytes.Equal(got, cookie) {
					t.Errorf("got %x, %v; want %x", got, err, cookie)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if _, err := ReadCookieFile(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: error = %v, want ErrNotExist", err)
	}
}

// Every way a cookie file can be unusable comes as a *CookieFileError naming
// the file, so that callers can say "the cookie is invalid" rather than
// blame the peer, and the cause still matches with errors.Is.
func TestReadCookieFileErrorType(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte(CookieHeader+"x"), 0o600)
	for path, cause := range map[string]error{short: ErrBadCookie, filepath.Join(dir, "none"): os.ErrNotExist} {
		_, err := ReadCookieFile(path)
		var cf *CookieFileError
		if !errors.As(err, &cf) || cf.Path != path || !errors.Is(err, cause) {
			t.Errorf("ReadCookieFile(%s) = %v, want a *CookieFileError for that path wrapping %v", path, err, cause)
		}
		if strings.Count(err.Error(), path) != 1 {
			t.Errorf("%q names the path other than once", err)
		}
	}
}
