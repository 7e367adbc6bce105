package main

import (
	"bytes"
	"io"
	"testing"
)

// scriptedConn reads its pieces one per Read, then io.EOF, and keeps what
// is written to it.
type scriptedConn struct {
	pieces      [][]byte
	written     bytes.Buffer
	closedWrite bool
}

func (c *scriptedConn) Read(b []byte) (int, error) {
	if len(c.pieces) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.pieces[0])
	if c.pieces[0] = c.pieces[0][n:]; len(c.pieces[0]) == 0 {
		c.pieces = c.pieces[1:]
	}
	return n, nil
}

func (c *scriptedConn) Write(b []byte) (int, error) { return c.written.Write(b) }
func (c *scriptedConn) CloseWrite() error           { c.closedWrite = true; return nil }

// A download request, even in pieces, gets its bytes and the sink's end;
// anything else comes back as it went, for the echo to go on.
func TestServeDownload(t *testing.T) {
	req := downloadRequest(300 << 10)
	c := &scriptedConn{pieces: [][]byte{req[:1], req[1:9], req[9:]}}
	sent, err := serveDownload(c)
	if !sent || err != nil || c.written.Len() != 300<<10 || !c.closedWrite {
		t.Errorf("request in 3 pieces: sent %v, %v; wrote %d bytes, closed its side %v; want true, nil, %d, true",
			sent, err, c.written.Len(), c.closedWrite, 300<<10)
	}
	for _, first := range [][]byte{{'x'}, make([]byte, 64), []byte("\xffPTBD-not-it....")} {
		c := &scriptedConn{pieces: [][]byte{first[:1], first[1:]}}
		if len(first) == 1 {
			c.pieces = c.pieces[:1]
		}
		sent, err := serveDownload(c)
		if sent || err != nil || !bytes.HasPrefix(first, c.written.Bytes()) || c.closedWrite {
			t.Errorf("first bytes %q: sent %v, %v, echoed %q, closed its side %v; want false, nil, a prefix, false",
				first, sent, err, c.written.Bytes(), c.closedWrite)
		}
		// What was not read yet is the echo's to copy.
		rest, _ := io.ReadAll(c)
		if got := append(c.written.Bytes(), rest...); !bytes.Equal(got, first) {
			t.Errorf("first bytes %q: echoed and left %q", first, got)
		}
	}
}
