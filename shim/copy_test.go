package shim

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// TestCopy copies byte-exact whatever the reads return: one byte at a
// time, half-full, full small and large buffers, and an error.
func TestCopy(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	for name, src := range map[string]io.Reader{
		"whole":      bytes.NewReader(data),
		"one byte":   iotest.OneByteReader(bytes.NewReader(data[:5000])),
		"half reads": iotest.HalfReader(bytes.NewReader(data)),
		"data+EOF":   iotest.DataErrReader(bytes.NewReader(data)),
	} {
		var out bytes.Buffer
		n, err := Copy(&out, src)
		want := data
		if name == "one byte" {
			want = data[:5000]
		}
		if err != nil || n != int64(len(want)) || !bytes.Equal(out.Bytes(), want) {
			t.Errorf("%s: copied %d bytes (err %v), equal %v; want %d", name, n, err, bytes.Equal(out.Bytes(), want), len(want))
		}
	}
	boom := errors.New("boom")
	if _, err := Copy(io.Discard, iotest.ErrReader(boom)); !errors.Is(err, boom) {
		t.Errorf("a read error: got %v", err)
	}
}
