package l7

import (
	"io"
	"sync"
)

// lazySize is the buffer a lazyWriter takes while it holds bytes: a streamed message
// goes to the backend in writes of up to this size.
const lazySize = 32 << 10

var lazyBufs = sync.Pool{New: func() any { b := make([]byte, lazySize); return &b }}

// lazyWriter buffers writes to w, as bufio.Writer does, but holds a buffer only while
// it has bytes not yet written: it takes one from a pool at the first write and gives
// it back at the Flush that empties it. A backend connection waits for its client or
// for a reply between flushes, and most of them are waiting at any moment: with a
// buffer each, 50 sessions held 1.6 MB of empty 32 KiB buffers (and the garbage
// collector let the heap grow twice that).
//
// Like bufio.Writer's, an error sticks: every later call returns it.
type lazyWriter struct {
	w   io.Writer
	buf *[]byte // nil while empty
	n   int     // bytes in buf
	err error
}

// Buffered is the number of bytes written but not yet flushed.
func (lw *lazyWriter) Buffered() int { return lw.n }

// Reset discards anything unflushed and the error, gives the buffer back and makes the
// writer write to w.
func (lw *lazyWriter) Reset(w io.Writer) {
	lw.release()
	lw.w, lw.err = w, nil
}

func (lw *lazyWriter) release() {
	if lw.buf != nil {
		lazyBufs.Put(lw.buf)
		lw.buf, lw.n = nil, 0
	}
}

// room returns the free part of the buffer, taking one when needed.
func (lw *lazyWriter) room() []byte {
	if lw.buf == nil {
		lw.buf = lazyBufs.Get().(*[]byte)
		lw.n = 0
	}
	return (*lw.buf)[lw.n:]
}

// Write writes p, flushing as the buffer fills; a p at least a buffer long with nothing
// buffered goes to w directly.
func (lw *lazyWriter) Write(p []byte) (int, error) {
	nn := 0
	for len(p) > 0 && lw.err == nil {
		if lw.n == 0 && len(p) >= lazySize {
			n, err := lw.w.Write(p)
			nn += n
			if err == nil && n < len(p) {
				err = io.ErrShortWrite
			}
			lw.err = err
			break
		}
		n := fill(lw, p)
		nn += n
		p = p[n:]
	}
	return nn, lw.err
}

// WriteString writes s.
func (lw *lazyWriter) WriteString(s string) (int, error) {
	nn := 0
	for len(s) > 0 && lw.err == nil {
		n := fill(lw, s)
		nn += n
		s = s[n:]
	}
	return nn, lw.err
}

// fill copies what of p the buffer takes, and flushes it when p did not fit.
func fill[S ~string | ~[]byte](lw *lazyWriter, p S) int {
	n := copy(lw.room(), p)
	lw.n += n
	if n < len(p) {
		lw.Flush()
	}
	return n
}

// WriteByte writes c.
func (lw *lazyWriter) WriteByte(c byte) error {
	if lw.err != nil {
		return lw.err
	}
	if lw.n == lazySize {
		if lw.Flush() != nil {
			return lw.err
		}
	}
	lw.room()[0] = c
	lw.n++
	return nil
}

// Flush writes the buffered bytes to w and gives the buffer back.
func (lw *lazyWriter) Flush() error {
	if lw.err != nil {
		return lw.err
	}
	if lw.n == 0 {
		lw.release()
		return nil
	}
	n, err := lw.w.Write((*lw.buf)[:lw.n])
	if err == nil && n < lw.n {
		err = io.ErrShortWrite
	}
	if err != nil {
		// What was not written stays, as bufio.Writer keeps it; the error sticks.
		copy(*lw.buf, (*lw.buf)[n:lw.n])
		lw.n -= n
		lw.err = err
		return err
	}
	lw.release()
	return nil
}
