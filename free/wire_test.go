package free

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/ptcombiner/ptcombiner/shim"
)

func mustAddr(t testing.TB, s string) shim.Addr {
	t.Helper()
	a, err := shim.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The stream header byte by byte, as docs/free.md gives it.
func TestHeaderWire(t *testing.T) {
	for _, tc := range []struct {
		h    Header
		wire []byte
	}{
		{Header{Command: Connect, Dest: mustAddr(t, "192.0.2.1:80")}, []byte{1, 1, 1, 192, 0, 2, 1, 0, 80}},
		{Header{Command: Connect, Dest: mustAddr(t, "[2001:db8::1]:443")},
			[]byte{1, 1, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187}},
		{Header{Command: Connect, Dest: mustAddr(t, "example.com:8080")},
			append(append([]byte{1, 1, 3, 11}, "example.com"...), 0x1f, 0x90)},
		{Header{Command: UDP}, []byte{1, 3}},
		{Header{Command: Window, Window: 4 << 20}, []byte{1, 0x81, 0, 0x40, 0, 0}},
	} {
		got, err := AppendHeader(nil, tc.h)
		if err != nil || !bytes.Equal(got, tc.wire) {
			t.Errorf("AppendHeader(%v %v) = % x, %v; want % x", tc.h.Command, tc.h.Dest, got, err, tc.wire)
		}
		r := bytes.NewReader(append(append([]byte{}, tc.wire...), "data"...))
		back, err := ReadHeader(r)
		if err != nil || back != tc.h {
			t.Errorf("ReadHeader(% x) = %+v, %v; want %+v", tc.wire, back, err, tc.h)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "data" {
			t.Errorf("ReadHeader(% x) left %q, want the data after it", tc.wire, rest)
		}
	}
}

// What ReadHeader refuses, and the error each gets.
func TestHeaderBad(t *testing.T) {
	for _, tc := range []struct {
		name string
		wire []byte
		want error
	}{
		{"empty", nil, io.EOF},
		{"version only", []byte{1}, io.ErrUnexpectedEOF},
		{"version 2", []byte{2, 1, 1, 1, 2, 3, 4, 0, 1}, ErrVersion},
		{"SOCKS5 by mistake", []byte{5, 1, 0}, ErrVersion},
		{"BIND", []byte{1, 2, 1, 1, 2, 3, 4, 0, 1}, ErrCommand},
		{"unknown address type", []byte{1, 1, 2, 1, 2, 3, 4, 0, 1}, shim.ErrAddressNotSupported},
		{"empty name", []byte{1, 1, 3, 0, 0, 80}, shim.ErrMalformed},
		{"name with a colon", append([]byte{1, 1, 3, 3}, "a:b\x00\x50"...), shim.ErrMalformed},
		{"name with a NUL", append([]byte{1, 1, 3, 3}, "a\x00b\x00\x50"...), shim.ErrMalformed},
		{"truncated IPv6", []byte{1, 1, 4, 0, 0, 0}, io.ErrUnexpectedEOF},
		{"truncated port", []byte{1, 1, 1, 1, 2, 3, 4, 0}, io.ErrUnexpectedEOF},
		{"truncated window", []byte{1, 0x81, 0, 0x40}, io.ErrUnexpectedEOF},
	} {
		_, err := ReadHeader(bytes.NewReader(tc.wire))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: ReadHeader(% x): %v, want %v", tc.name, tc.wire, err, tc.want)
		}
	}
	if _, err := AppendHeader(nil, Header{Command: Connect, Dest: shim.Addr{Name: "a b", Port: 1}}); err == nil {
		t.Error("AppendHeader took a name with a space")
	}
	if _, err := AppendHeader(nil, Header{Command: Command{9}}); !errors.Is(err, ErrCommand) {
		t.Errorf("AppendHeader of command 9: %v", err)
	}
}

// A UDP frame byte by byte, frames back to back, and the bounds of LEN.
func TestFrameWire(t *testing.T) {
	got, err := AppendFrame(nil, mustAddr(t, "127.0.0.1:53"), []byte("q"))
	want := []byte{0, 8, 1, 127, 0, 0, 1, 0, 53, 'q'}
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("AppendFrame = % x, %v; want % x", got, err, want)
	}
	got, _ = AppendFrame(got, mustAddr(t, "a.b:7"), nil) // an empty datagram is a datagram
	got, _ = AppendFrame(got, mustAddr(t, "[::1]:9"), bytes.Repeat([]byte{7}, 1400))
	r := bytes.NewReader(got)
	buf := make([]byte, maxFrame)
	for _, w := range []struct {
		addr string
		n    int
	}{{"127.0.0.1:53", 1}, {"a.b:7", 0}, {"[::1]:9", 1400}} {
		a, data, err := ReadFrame(r, buf)
		if err != nil || a.String() != w.addr || len(data) != w.n {
			t.Fatalf("ReadFrame = %v, %d bytes, %v; want %s, %d bytes", a, len(data), err, w.addr, w.n)
		}
	}
	if _, _, err := ReadFrame(r, buf); err != io.EOF {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}

	// The largest datagram a frame holds, to an IPv4 address, and one more.
	a := mustAddr(t, "192.0.2.1:1")
	if _, err := AppendFrame(nil, a, make([]byte, maxFrame-7)); err != nil {
		t.Errorf("a datagram of %d bytes: %v", maxFrame-7, err)
	}
	if _, err := AppendFrame(nil, a, make([]byte, maxFrame-6)); !errors.Is(err, ErrFrame) {
		t.Errorf("a datagram of %d bytes: %v, want ErrFrame", maxFrame-6, err)
	}
}

// A frame whose address does not parse is dropped alone: the next frame
// still reads. A frame cut short is an unexpected EOF.
func TestFrameBad(t *testing.T) {
	good, _ := AppendFrame(nil, mustAddr(t, "192.0.2.1:1"), []byte("ok"))
	for _, bad := range [][]byte{
		{0, 0},                  // LEN 0: no address
		{0, 3, 9, 1, 2},         // address type 9
		{0, 4, 1, 1, 2, 3},      // IPv4 cut short
		{0, 3, 3, 0, 0},         // empty name
		{0, 5, 3, 1, ':', 0, 1}, // name ":"
	} {
		r := bytes.NewReader(append(append([]byte{}, bad...), good...))
		buf := make([]byte, maxFrame)
		if _, _, err := ReadFrame(r, buf); !errors.Is(err, ErrFrame) {
			t.Errorf("frame % x: %v, want ErrFrame", bad, err)
			continue
		}
		if a, data, err := ReadFrame(r, buf); err != nil || string(data) != "ok" || a.String() != "192.0.2.1:1" {
			t.Errorf("the frame after % x: %v %q %v", bad, a, data, err)
		}
	}
	for _, cut := range [][]byte{{0}, {0, 9, 1, 2}} {
		if _, _, err := ReadFrame(bytes.NewReader(cut), make([]byte, maxFrame)); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("frame % x: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}

// FuzzReadHeader: whatever ReadHeader accepts encodes back to exactly the
// bytes it read; it never panics, never reads past the header.
func FuzzReadHeader(f *testing.F) {
	for _, seed := range [][]byte{
		{1, 1, 1, 127, 0, 0, 1, 0, 80},
		{1, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 187},
		append([]byte{1, 1, 3, 11}, "example.com\x1f\x90"...),
		{1, 3},
		{1, 3, 'x'},
		{1, 0x81, 0, 0x40, 0, 0},
		{1, 0x81, 0},
		{1, 2},
		{2, 1},
		{1, 1, 3, 0},
		{1, 1, 9},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := ReadHeader(r)
		if err != nil {
			return
		}
		read := in[:len(in)-r.Len()]
		back, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("ReadHeader(% x) = %+v, which AppendHeader refuses: %v", in, h, err)
		}
		if !bytes.Equal(back, read) {
			t.Fatalf("ReadHeader read % x, which encodes back as % x", read, back)
		}
		if h.Command == Connect && strings.ContainsAny(h.Dest.String(), " \x00") {
			t.Fatalf("destination %q", h.Dest)
		}
	})
}

// FuzzReadFrame: a frame ReadFrame accepts encodes back to exactly its
// bytes.
func FuzzReadFrame(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 8, 1, 127, 0, 0, 1, 0, 53, 'q'},
		{0, 7, 3, 3, 'a', '.', 'b', 0, 7},
		{0, 19, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9},
		{0, 0},
		{0, 3, 9, 1, 2},
		{0xff, 0xff, 1},
	} {
		f.Add(seed)
	}
	buf := make([]byte, maxFrame)
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		a, data, err := ReadFrame(r, buf)
		if err != nil {
			return
		}
		read := in[:len(in)-r.Len()]
		back, err := AppendFrame(nil, a, data)
		if err != nil || !bytes.Equal(back, read) {
			t.Fatalf("ReadFrame read % x (%v, %d bytes), which encodes back as % x, %v", read, a, len(data), back, err)
		}
	})
}

// The address codec keeps IPv4-mapped addresses as IPv6, as SOCKS5 does.
func TestAddrFamilies(t *testing.T) {
	mapped := shim.AddrFrom(netip.MustParseAddrPort("[::ffff:192.0.2.1]:5"))
	b, _ := shim.AppendAddr(nil, mapped)
	if b[0] != 4 || len(b) != 19 {
		t.Errorf("IPv4-mapped address encoded as % x", b)
	}
}
