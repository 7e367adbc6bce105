package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// header is the first line a client hop writes after dialling.
func header(method string, key byte) string { return fmt.Sprintf("TESTPT1 %s %d\n", method, key) }

const maxHeader = 256

// readHeader reads and checks the header line from br.
func readHeader(br *bufio.Reader, method string, key byte) error {
	var line []byte
	for len(line) < maxHeader {
		b, err := br.ReadByte()
		if err != nil {
			return fmt.Errorf("reading the header: %w", err)
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
	}
	if len(line) == 0 || line[len(line)-1] != '\n' {
		return fmt.Errorf("no header line within %d bytes", maxHeader)
	}
	f := strings.Fields(string(line))
	if len(f) != 3 || f[0] != "TESTPT1" {
		return fmt.Errorf("bad header %q", line)
	}
	if f[1] != method {
		return fmt.Errorf("header names method %q, this listener is %q", f[1], method)
	}
	k, err := strconv.Atoi(f[2])
	if err != nil || k != int(key) {
		return fmt.Errorf("header key %q, this server's key is %d", f[2], key)
	}
	return nil
}

// parseKey reads a key option or argument (0-255).
func parseKey(s string, ok bool) (byte, error) {
	if !ok {
		return defaultKey, nil
	}
	k, err := strconv.Atoi(s)
	if err != nil || k < 0 || k > 255 {
		return 0, fmt.Errorf("key %q is not 0-255", s)
	}
	return byte(k), nil
}

// xorCopy copies src to dst, XORing every byte with key, then half-closes dst.
func xorCopy(dst io.Writer, src io.Reader, key byte) error {
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for i := range buf[:n] {
				buf[i] ^= key
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				return nil
			}
			return err
		}
	}
}

// relay runs the transform both ways: plain is the side without the
// transform; wire's bytes (after what br already buffered) are XORed.
func relay(plain net.Conn, wire net.Conn, wireReader io.Reader, key byte) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); xorCopy(wire, plain, key) }()
	go func() { defer wg.Done(); xorCopy(plain, wireReader, key) }()
	wg.Wait()
	plain.Close()
	wire.Close()
}

// encodeArgs encodes args deterministically: keys sorted, values in order,
// "k=v" joined by ';', with '\', ';' and '=' escaped by '\'.
func encodeArgs(args map[string][]string) string {
	esc := strings.NewReplacer(`\`, `\\`, `;`, `\;`, `=`, `\=`)
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		for _, v := range args[k] {
			parts = append(parts, esc.Replace(k)+"="+esc.Replace(v))
		}
	}
	return strings.Join(parts, ";")
}
