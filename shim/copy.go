package shim

import (
	"io"
	"sync"
)

// The copy of a connection that cannot splice (an in-process hop's) blocks
// in Read for as long as the connection is idle, holding the buffer it
// reads into. Copy therefore reads into a small buffer of its own and
// takes a large one from a pool only while bytes keep coming: an idle
// connection holds smallCopy bytes per direction instead of io.Copy's
// 32 KiB.
const (
	smallCopy = 2 << 10
	largeCopy = 32 << 10
)

var largeCopies = sync.Pool{New: func() any { return new([largeCopy]byte) }}

// Copy copies src to dst until src's EOF (nil error) or an error, as
// io.Copy does without ReaderFrom or WriterTo: through a buffer that is
// large only while the bytes flow (a read that fills the small buffer
// takes the large one; a read that leaves the large one mostly empty gives
// it back).
func Copy(dst io.Writer, src io.Reader) (written int64, err error) {
	small := make([]byte, smallCopy)
	var large *[largeCopy]byte
	defer func() {
		if large != nil {
			largeCopies.Put(large)
		}
	}()
	for {
		buf := small
		if large != nil {
			buf = large[:]
		}
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			written += int64(nw)
			switch {
			case werr != nil:
				return written, werr
			case nw != nr:
				return written, io.ErrShortWrite
			}
		}
		switch {
		case rerr == io.EOF:
			return written, nil
		case rerr != nil:
			return written, rerr
		case large == nil && nr == len(small):
			large = largeCopies.Get().(*[largeCopy]byte)
		case large != nil && nr < len(small):
			largeCopies.Put(large)
			large = nil
		}
	}
}
