package l7

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		got <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-got
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestSockBulk: 8 MiB each way at once through socks (writes larger than the socket
// buffers wait for room; reads wait for bytes), then EOF after the peer's close.
func TestSockBulk(t *testing.T) {
	a, b := tcpPair(t)
	sa, sb := newSock(a), newSock(b)
	if sa == nil || sb == nil {
		t.Fatal("no sock for a *net.TCPConn")
	}
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	want := sha256.Sum256(data)
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	read := func(s *sock) chan result {
		ch := make(chan result, 1)
		go func() {
			h := sha256.New()
			n, err := io.Copy(h, struct{ io.Reader }{s})
			var r result
			copy(r.sum[:], h.Sum(nil))
			r.n, r.err = n, err
			ch <- r
		}()
		return ch
	}
	ra, rb := read(sa), read(sb)
	werr := make(chan error, 1)
	go func() {
		_, err := sa.Write(data)
		a.CloseWrite()
		werr <- err
	}()
	if n, err := sb.Write(data); err != nil || n != len(data) {
		t.Fatalf("Write: %d, %v", n, err)
	}
	b.CloseWrite()
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	for _, r := range []result{<-ra, <-rb} {
		if r.err != nil || r.n != int64(len(data)) || r.sum != want {
			t.Errorf("read %d bytes (err %v), checksum equal: %v", r.n, r.err, r.sum == want)
		}
	}
	if n, err := sa.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Read after the peer's FIN: %d, %v; want 0, EOF", n, err)
	}
}

// TestSockDeadlineAndClose: a read waits for the deadline (a timeout error, as net.Conn
// gives), and a read or write after Close fails with net.ErrClosed.
func TestSockDeadlineAndClose(t *testing.T) {
	a, b := tcpPair(t)
	sa := newSock(a)
	a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := sa.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	b.Write([]byte("220 hi\r\n"))
	buf := make([]byte, 64)
	n, err := sa.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], []byte("220 hi\r\n")) {
		t.Fatalf("Read: %q, %v", buf[:n], err)
	}
	a.Close()
	if _, err := sa.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v, want net.ErrClosed", err)
	}
	if _, err := sa.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
}

// TestSockOnlyPlainTCP: a wrapper of a TCP connection (a test's counting conn, TLS) keeps
// its own Read and Write.
func TestSockOnlyPlainTCP(t *testing.T) {
	a, _ := tcpPair(t)
	if s := newSock(&countingConn{TCPConn: a}); s != nil {
		t.Error("a sock for a wrapped connection: its Write would be bypassed")
	}
	w := &countingConn{TCPConn: a}
	if rw := sockRW(w); rw != io.ReadWriter(w) {
		t.Errorf("sockRW of a wrapper is %T, want the wrapper itself", rw)
	}
}
