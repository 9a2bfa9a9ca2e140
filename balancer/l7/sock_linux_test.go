package l7

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
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

// fdPair is a loopback TCP connection whose server side is an fdConn, as a client
// accepted by descriptor becomes at its first byte.
func fdPair(t *testing.T) (client *net.TCPConn, srv *fdConn) {
	t.Helper()
	a, b := tcpPair(t)
	f, err := b.File() // a duplicate of b's descriptor
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	syscall.SetNonblock(fd, true)
	b.Close()
	c, err := newFDConn(fd, a.LocalAddr().(*net.TCPAddr).AddrPort(), &fdListener{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return a, c
}

// TestFDConnIsANetConn: an fdConn's errors are a socket's (go-smtp ends a session quietly
// on net.ErrClosed only, and answers a timeout with 421), directly and through its sock;
// its addresses are the client's and, for a wildcard listener, the kernel's.
func TestFDConnIsANetConn(t *testing.T) {
	a, c := fdPair(t)
	if got, want := c.RemoteAddr().String(), a.LocalAddr().String(); got != want {
		t.Errorf("RemoteAddr %s, want %s", got, want)
	}
	if got, want := c.LocalAddr().String(), a.RemoteAddr().String(); got != want {
		t.Errorf("LocalAddr (getsockname) %s, want %s", got, want)
	}
	sk := newSock(c)
	if sk == nil {
		t.Fatal("no sock for an fdConn")
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := sk.Read(make([]byte, 10)); !isTimeout(err) {
		t.Fatalf("sock Read past the deadline: %v, want a timeout", err)
	}
	if _, err := c.Read(make([]byte, 10)); !isTimeout(err) {
		t.Fatalf("Read past the deadline: %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	a.Write([]byte("EHLO x\r\n"))
	buf := make([]byte, 64)
	if n, err := sk.Read(buf); err != nil || string(buf[:n]) != "EHLO x\r\n" {
		t.Fatalf("sock Read: %q, %v", buf[:n], err)
	}
	if _, err := sk.Write([]byte("250 ok\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(a); err != nil || string(got) != "250 ok\r\n" {
		t.Fatalf("client read %q, %v; want the reply, then EOF at CloseWrite", got, err)
	}
	c.Close()
	for name, err := range map[string]error{
		"Read": func() error { _, err := c.Read(buf); return err }(), "Write": func() error { _, err := c.Write(buf); return err }(),
		"sock Read": func() error { _, err := sk.Read(buf); return err }(), "sock Write": func() error { _, err := sk.Write(buf); return err }(),
	} {
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("%s after Close: %v, want net.ErrClosed", name, err)
		}
	}
}
