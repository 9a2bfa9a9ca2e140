package l7

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestLazyWriterHoldsNoBufferWhenFlushed: the writer takes a buffer for what it holds
// and gives it back at the flush that empties it, so a backend connection waiting for a
// reply or for its client holds none.
func TestLazyWriterHoldsNoBufferWhenFlushed(t *testing.T) {
	var out bytes.Buffer
	var lw lazyWriter
	lw.Reset(&out)
	if lw.buf != nil {
		t.Fatal("a new writer holds a buffer")
	}
	lw.WriteString("MAIL FROM:<a@example.org>\r\n")
	lw.Write([]byte("RCPT TO:<b@example.org>\r\n"))
	lw.WriteByte('.')
	want := "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n."
	if lw.buf == nil || lw.Buffered() != len(want) || out.Len() != 0 {
		t.Fatalf("buffered %d (buffer held %v), written %d: want %d held, nothing written", lw.Buffered(), lw.buf != nil, out.Len(), len(want))
	}
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	if lw.buf != nil || lw.Buffered() != 0 {
		t.Fatal("a flushed writer still holds its buffer")
	}
	if out.String() != want {
		t.Fatalf("wrote %q, want %q", out.String(), want)
	}
}

// countWriter records the size of each write.
type countWriter struct {
	bytes.Buffer
	writes []int
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.writes = append(c.writes, len(p))
	return c.Buffer.Write(p)
}

// TestLazyWriterLargeWrites: writes larger than the buffer arrive whole and in order,
// in writes of at most lazySize (or one direct write when nothing is buffered).
func TestLazyWriterLargeWrites(t *testing.T) {
	var out countWriter
	var lw lazyWriter
	lw.Reset(&out)
	var want bytes.Buffer
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80,000 bytes
	lw.WriteString("BDAT 80000 LAST\r\n")
	want.WriteString("BDAT 80000 LAST\r\n")
	lw.Write(big)
	want.Write(big)
	lw.WriteString(strings.Repeat("x", 2*lazySize+7))
	want.WriteString(strings.Repeat("x", 2*lazySize+7))
	for i := 0; i < lazySize+3; i++ {
		lw.WriteByte('y')
		want.WriteByte('y')
	}
	lw.Write(big)
	want.Write(big)
	if err := lw.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Fatalf("wrote %d bytes, want %d (content differs)", out.Len(), want.Len())
	}
	for _, n := range out.writes {
		if n > len(big) {
			t.Fatalf("a write of %d bytes", n)
		}
	}
	if lw.buf != nil {
		t.Fatal("a flushed writer still holds its buffer")
	}
}

// failWriter takes limit bytes, then fails.
type failWriter struct {
	limit int
	got   bytes.Buffer
}

var errBroken = errors.New("broken pipe")

func (f *failWriter) Write(p []byte) (int, error) {
	if f.got.Len()+len(p) <= f.limit {
		return f.got.Write(p)
	}
	n := f.limit - f.got.Len()
	f.got.Write(p[:n])
	return n, errBroken
}

// TestLazyWriterErrorSticks: after a failed write every call returns the error, and
// nothing more reaches the writer below, as with bufio.Writer.
func TestLazyWriterErrorSticks(t *testing.T) {
	fw := &failWriter{limit: 10}
	var lw lazyWriter
	lw.Reset(fw)
	lw.WriteString("DATA\r\nmore than ten bytes\r\n")
	if err := lw.Flush(); !errors.Is(err, errBroken) {
		t.Fatalf("Flush: %v, want the write's error", err)
	}
	if _, err := lw.WriteString("QUIT\r\n"); !errors.Is(err, errBroken) {
		t.Fatalf("WriteString after the error: %v", err)
	}
	if err := lw.WriteByte('x'); !errors.Is(err, errBroken) {
		t.Fatalf("WriteByte after the error: %v", err)
	}
	if err := lw.Flush(); !errors.Is(err, errBroken) {
		t.Fatalf("a second Flush: %v", err)
	}
	if fw.got.String() != "DATA\r\nmore" {
		t.Fatalf("the writer below got %q", fw.got.String())
	}
	lw.Reset(io.Discard)
	if lw.buf != nil || lw.err != nil {
		t.Fatal("Reset kept the buffer or the error")
	}
}
