package extorport

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	for _, tt := range []struct {
		cmd  uint16
		body []byte
		wire []byte // the encoding's first bytes
	}{
		{CmdDone, nil, []byte{0, 0, 0, 0}},
		{CmdUserAddr, []byte("1.2.3.4:5678"), []byte{0, 1, 0, 12, '1'}},
		{CmdTransport, []byte("obfs4"), []byte{0, 2, 0, 5, 'o'}},
		{CmdOkay, nil, []byte{0x10, 0, 0, 0}},
		{CmdDeny, nil, []byte{0x10, 1, 0, 0}},
		{CmdControl, []byte{0}, []byte{0x10, 2, 0, 1, 0}},
		{0xffff, bytes.Repeat([]byte{'x'}, MaxBodyLen), []byte{0xff, 0xff, 0xff, 0xff, 'x'}},
	} {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, tt.cmd, tt.body); err != nil {
			t.Fatalf("WriteFrame(0x%04x): %v", tt.cmd, err)
		}
		if !bytes.HasPrefix(buf.Bytes(), tt.wire) || buf.Len() != 4+len(tt.body) {
			t.Errorf("WriteFrame(0x%04x) = %x..., want %x...", tt.cmd, buf.Bytes()[:min(buf.Len(), 8)], tt.wire)
		}
		buf.WriteString("next")
		cmd, body, err := ReadFrame(&buf)
		if err != nil || cmd != tt.cmd || !bytes.Equal(body, tt.body) {
			t.Errorf("ReadFrame = 0x%04x, %d bytes, %v; want 0x%04x, %d bytes", cmd, len(body), err, tt.cmd, len(tt.body))
		}
		if buf.String() != "next" {
			t.Errorf("ReadFrame consumed past the frame: %q left", buf.String())
		}
	}
}

func TestWriteFrameTooLong(t *testing.T) {
	var buf bytes.Buffer
	err := WriteFrame(&buf, CmdUserAddr, make([]byte, MaxBodyLen+1))
	if !errors.Is(err, ErrFrameTooLong) || buf.Len() != 0 {
		t.Errorf("error = %v with %d bytes written, want ErrFrameTooLong and none", err, buf.Len())
	}
}

func TestReadFrameTruncated(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want error
	}{
		{"", io.EOF},
		{"\x00", io.ErrUnexpectedEOF},
		{"\x00\x01\x00", io.ErrUnexpectedEOF},
		{"\x00\x01\x00\x02", io.ErrUnexpectedEOF},
		{"\x00\x01\x00\x02a", io.ErrUnexpectedEOF},
		{"\x00\x01\xff\xff" + strings.Repeat("a", 1000), io.ErrUnexpectedEOF},
	} {
		if _, _, err := ReadFrame(strings.NewReader(tt.in)); !errors.Is(err, tt.want) {
			t.Errorf("ReadFrame(%q) error = %v, want %v", tt.in, err, tt.want)
		}
	}
}

func TestParseUserAddr(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"1.2.3.4:5678", true},
		{"[1:2::3:4]:5678", true},
		{"[::1]:1", true},
		{"[::ffff:1.2.3.4]:65535", true},
		{"127.0.0.1:05678", true}, // a leading zero is still a port
		{"", false},
		{"nonsense", false},
		{"1.2.3.4", false},
		{"1.2.3.4:", false},
		{"1.2.3.4:99999", false},
		{"1.2.3.4:0", false},
		{"1.2.3.4:-1", false},
		{"1.2.3.4:5678\x00", false},
		{"1.2.3.4\x00:5678", false},
		{" 1.2.3.4:5678", false},
		{"1:2::3:4:5678", false},
		{"[1.2.3.4]:5678", false},
		{"[fe80::1%eth0]:80", false},
		{"01.2.3.4:80", false},
		{"example.com:80", false},
		{"1.2.3.4:5678\n", false},
	} {
		_, err := parseUserAddr(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("parseUserAddr(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBadUserAddr) {
			t.Errorf("parseUserAddr(%q) error = %v, not ErrBadUserAddr", tt.in, err)
		}
	}
}

func TestCheckTransport(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"obfs4", true},
		{"_", true},
		{"A_b_9", true},
		{"", false},
		{"9x", false},
		{"obfs3|obfs4", false},
		{"obfs4\x00", false},
		{"a-b", false},
		{"a b", false},
		{"é", false},
	} {
		err := checkTransport(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("checkTransport(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBadTransport) {
			t.Errorf("checkTransport(%q) error = %v, not ErrBadTransport", tt.in, err)
		}
	}
}
