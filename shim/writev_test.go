package shim

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// writeCounter is a connection that is not TCP: it counts its Writes.
type writeCounter struct {
	net.Conn
	writes [][]byte
}

func (w *writeCounter) Write(b []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), b...))
	return len(b), nil
}

// WriteBuffers gives a connection that is not TCP one Write of the whole
// (a transport that frames each Write must not see a header alone), and
// a TCP connection every byte in order.
func TestWriteBuffers(t *testing.T) {
	v := [][]byte{[]byte("head"), []byte("payload"), nil, []byte("!")}
	w := &writeCounter{}
	if n, err := WriteBuffers(w, v); n != 12 || err != nil {
		t.Fatalf("WriteBuffers to a non-TCP conn = %d, %v", n, err)
	}
	if len(w.writes) != 1 || string(w.writes[0]) != "headpayload!" {
		t.Errorf("a non-TCP conn saw writes %q, want one of %q", w.writes, "headpayload!")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 1<<20)
	if n, err := WriteBuffers(c, [][]byte{[]byte("head"), big}); n != 4+len(big) || err != nil {
		t.Fatalf("WriteBuffers to TCP = %d, %v", n, err)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, append([]byte("head"), big...)) {
		t.Errorf("TCP peer got %d bytes, want %d, in order", len(b), 4+len(big))
	}
}
