package free

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"
)

// LoadCredentials reads a --proxy-auth file: one USER:PASSWORD a line (the
// password may hold ':', the user may not), each 1..255 bytes as RFC 1929
// allows; blank lines and lines starting with '#' are ignored. It returns
// the check for Proxy.Check, which compares in constant time, and warns
// (warn) when others than the owner may read the file.
func LoadCredentials(path string, warn func(msg string)) (func(user, pass []byte) bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--proxy-auth: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 && warn != nil {
		warn(fmt.Sprintf("--proxy-auth %s can be read by others than its owner (mode %v): chmod 600 it", path, fi.Mode().Perm()))
	}
	users := map[string][32]byte{} // user -> SHA-256 of the password
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		switch {
		case !ok:
			return nil, fmt.Errorf("--proxy-auth %s:%d: want USER:PASSWORD", path, n)
		case len(user) < 1 || len(user) > 255 || len(pass) < 1 || len(pass) > 255:
			return nil, fmt.Errorf("--proxy-auth %s:%d: user and password must be 1..255 bytes each (RFC 1929)", path, n)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("--proxy-auth %s:%d: user %q again", path, n, user)
		}
		users[user] = sha256.Sum256([]byte(pass))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--proxy-auth %s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("--proxy-auth %s: no USER:PASSWORD line", path)
	}
	return func(user, pass []byte) bool {
		want, known := users[string(user)]
		got := sha256.Sum256(pass)
		// An unknown user costs the same comparison as a known one.
		return subtle.ConstantTimeCompare(got[:], want[:]) == 1 && known
	}, nil
}
