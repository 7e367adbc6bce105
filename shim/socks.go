package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// RFC 1928 section 3 and 4 constants.
const (
	socksVersion = 0x05

	methodNone         = 0x00
	methodUserPass     = 0x02
	methodNoAcceptable = 0xff

	cmdConnect = 0x01

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	// RFC 1929 section 2: "The VER field contains the current version of
	// the subnegotiation, which is X'01'".
	userPassVersion = 0x01
	userPassSuccess = 0x00
	userPassFailure = 0x01
)

// SOCKS5 reply codes, RFC 1928 section 6 ("REP Reply field").
const (
	RepSucceeded           byte = 0x00 // succeeded
	RepGeneralFailure      byte = 0x01 // general SOCKS server failure
	RepNotAllowed          byte = 0x02 // connection not allowed by ruleset
	RepNetworkUnreachable  byte = 0x03 // Network unreachable
	RepHostUnreachable     byte = 0x04 // Host unreachable
	RepConnectionRefused   byte = 0x05 // Connection refused
	RepTTLExpired          byte = 0x06 // TTL expired
	RepCommandNotSupported byte = 0x07 // Command not supported
	RepAddressNotSupported byte = 0x08 // Address type not supported
)

// Errors that the SOCKS functions wrap; test for them with errors.Is.
var (
	// ErrMalformed: a SOCKS message broke RFC 1928 or RFC 1929.
	ErrMalformed = errors.New("malformed SOCKS5 message")
	// ErrNoAcceptableMethods: the two sides share no authentication method.
	ErrNoAcceptableMethods = errors.New("no acceptable SOCKS5 authentication method")
	// ErrAuthFailed: RFC 1929 authentication failed. A goptlib server fails
	// it when the username and password do not parse as PT arguments.
	ErrAuthFailed = errors.New("SOCKS5 username/password authentication failed")
	// ErrCommandNotSupported: a request for anything but CONNECT.
	ErrCommandNotSupported = errors.New("SOCKS5 command not supported")
	// ErrAddressNotSupported: a request with an unknown address type.
	ErrAddressNotSupported = errors.New("SOCKS5 address type not supported")
	// ErrInvalidTarget: Handshake was given a target it cannot encode.
	ErrInvalidTarget = errors.New("invalid SOCKS5 target")
	// ErrInvalidCredentials: Handshake was given a username or password
	// outside RFC 1929's 1..255 bytes.
	ErrInvalidCredentials = errors.New("invalid SOCKS5 credentials")
)

// ReplyError is a non-zero REP field in a SOCKS5 server's reply to a request.
type ReplyError struct {
	Code byte
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("%s (0x%02x)", replyText(e.Code), e.Code)
}

// replyText names a REP code as RFC 1928 section 6 does.
func replyText(code byte) string {
	switch code {
	case RepSucceeded:
		return "succeeded"
	case RepGeneralFailure:
		return "general SOCKS server failure"
	case RepNotAllowed:
		return "connection not allowed by ruleset"
	case RepNetworkUnreachable:
		return "network unreachable"
	case RepHostUnreachable:
		return "host unreachable"
	case RepConnectionRefused:
		return "connection refused"
	case RepTTLExpired:
		return "TTL expired"
	case RepCommandNotSupported:
		return "command not supported"
	case RepAddressNotSupported:
		return "address type not supported"
	default:
		return "unassigned SOCKS5 reply code"
	}
}

// ReplyCodeFor maps err to the SOCKS5 reply that best describes it to the
// client: a *ReplyError anywhere in the chain gives its own code (a child's
// verdict is relayed unchanged), then ECONNREFUSED, ENETUNREACH and
// EHOSTUNREACH their RFC 1928 codes, a timeout or an expired deadline "TTL
// expired", and anything else "general SOCKS server failure". A nil error is
// RepSucceeded.
func ReplyCodeFor(err error) byte {
	if err == nil {
		return RepSucceeded
	}
	var re *ReplyError
	if errors.As(err, &re) && re.Code != RepSucceeded {
		return re.Code
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return RepConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return RepNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return RepHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return RepTTLExpired
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return RepTTLExpired
	}
	return RepGeneralFailure
}
