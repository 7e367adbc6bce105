package extorport

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// CookieHeader is the cookie file's StaticHeader. ext-orport-spec 2.1.2:
// "StaticHeader is the following string: "! Extended ORPort Auth Cookie !\x0a"".
const CookieHeader = "! Extended ORPort Auth Cookie !\x0a"

const cookieFileLen = len(CookieHeader) + cookieLen // 64

// WriteCookieFile writes a fresh cookie file at path and returns the 32-byte
// cookie. ext-orport-spec 2.1.2: "StaticHeader [32 octets], Cookie [32
// octets]". The file has mode 0600 and is written atomically: a temporary file
// in the same directory, synced, then renamed over path, so a reader (goptlib
// reads the file on every dial) never sees it half-written.
func WriteCookieFile(path string) ([]byte, error) {
	cookie := make([]byte, cookieLen)
	if _, err := rand.Read(cookie); err != nil {
		return nil, fmt.Errorf("extorport: generating cookie: %w", err)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("extorport: writing cookie file %q: %w", path, err)
	}
	tmp := f.Name()
	werr := writeCookieTo(f, cookie)
	if cerr := f.Close(); werr == nil && cerr != nil {
		werr = fmt.Errorf("closing: %w", cerr)
	}
	if werr == nil {
		if err := os.Rename(tmp, path); err != nil {
			werr = fmt.Errorf("renaming into place: %w", err)
		}
	}
	if werr != nil {
		_ = os.Remove(tmp) // best effort; the write already failed
		return nil, fmt.Errorf("extorport: writing cookie file %q: %w", path, werr)
	}
	return cookie, nil
}

func writeCookieTo(f *os.File, cookie []byte) error {
	// CreateTemp already uses 0600; say so explicitly against a loose umask
	// assumption or a future change.
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	buf := make([]byte, 0, cookieFileLen)
	buf = append(buf, CookieHeader...)
	buf = append(buf, cookie...)
	if _, err := f.Write(buf); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

// CookieFileError is ReadCookieFile's error: the cookie file at Path could
// not be read (Err wraps the os error) or is no cookie file (Err wraps
// ErrBadCookie). Find it with errors.As to tell a bad cookie file apart
// from a peer's failure.
type CookieFileError struct {
	Path string
	Err  error
}

func (e *CookieFileError) Error() string {
	return fmt.Sprintf("extorport: cookie file %q: %v", e.Path, e.Err)
}

func (e *CookieFileError) Unwrap() error { return e.Err }

// ReadCookieFile reads a cookie file and returns its 32-byte cookie. The file
// must be exactly 64 bytes and start with CookieHeader. ext-orport-spec 2.1.2:
// "Extended ORPort clients MUST make sure that the StaticHeader is present in
// the cookie file, before proceeding with the authentication protocol."
// Every error is a *CookieFileError.
func ReadCookieFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) { // the path is said once, by CookieFileError
			err = fmt.Errorf("%s: %w", pe.Op, pe.Err)
		}
		return nil, &CookieFileError{Path: path, Err: err}
	}
	defer f.Close() // read-only: a Close error cannot lose data
	cookie, err := parseCookieFile(f)
	if err != nil {
		return nil, &CookieFileError{Path: path, Err: err}
	}
	return cookie, nil
}

// parseCookieFile reads at most one byte more than a cookie file holds and
// checks length and header.
func parseCookieFile(r io.Reader) ([]byte, error) {
	buf, err := io.ReadAll(io.LimitReader(r, int64(cookieFileLen)+1))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	switch {
	case len(buf) > cookieFileLen:
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrBadCookie, cookieFileLen)
	case len(buf) < cookieFileLen:
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadCookie, len(buf), cookieFileLen)
	}
	if subtle.ConstantTimeCompare(buf[:len(CookieHeader)], []byte(CookieHeader)) != 1 {
		return nil, fmt.Errorf("%w: missing header %q", ErrBadCookie, CookieHeader)
	}
	return buf[len(CookieHeader):], nil
}

// checkCookie refuses a cookie of the wrong size before any byte is sent.
func checkCookie(cookie []byte) error {
	if len(cookie) != cookieLen {
		return fmt.Errorf("%w: %d bytes, want %d", ErrBadCookie, len(cookie), cookieLen)
	}
	return nil
}
