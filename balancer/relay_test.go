package balancer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/pool"
)

// stream is n pseudo-random bytes from seed.
func stream(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), n)
}

func sum(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, n, err
}

// bulkBackend writes size bytes of seed 2 and half-closes, while it reads what comes and
// reports its checksum.
func bulkBackend(t *testing.T, size int64) (addr string, got chan [32]byte) {
	got = make(chan [32]byte, 4)
	addr = testutil.ServeTCP(t, func(c net.Conn) { // closed once both ways are done
		sent := make(chan struct{})
		go func() {
			defer close(sent)
			io.Copy(c, stream(2, size))
			c.(*net.TCPConn).CloseWrite()
		}()
		s, _, _ := sum(c)
		got <- s
		<-sent
	})
	return addr, got
}

// Bulk both ways at once arrives whole and in order, with the half-close after it, and
// is counted: through the buffers when a reader is slow (a small receive buffer read in
// small pieces), through the kernel (splice) when it is not.
func TestBulkBothWaysWithChecksum(t *testing.T) {
	for _, slow := range []bool{false, true} {
		size := int64(24 << 20)
		if slow {
			size = 2 << 20
		}
		want1, _, _ := sum(stream(1, size))
		want2, _, _ := sum(stream(2, size))
		t.Run(fmt.Sprintf("slow reader %v", slow), func(t *testing.T) {
			addr, got := bulkBackend(t, size)
			tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: addr}}})
			f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
			d := net.Dialer{}
			c, err := d.Dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if slow {
				c.(*net.TCPConn).SetReadBuffer(16 << 10)
			}
			var r io.Reader
			if slow {
				r = readSmall{c} // many small reads
			}
			exchange(t, c, r, stream(1, size), size, want2, want1, got)
			waitFor(t, func() bool { return len(f.log.conns()) == 1 })
			l := f.log.conns()[0]
			if l["bytes_in"].(float64) != float64(size) || l["bytes_out"].(float64) != float64(size) || l["outcome"] != "ok" {
				t.Fatalf("log %v", l)
			}
		})
	}
}

// exchange writes send to c and half-closes while it reads c's answer through r (c itself
// when nil) to the end: the answer must be size bytes summing to want, and the backend's
// checksum of what it got (from got) wantGot.
func exchange(t *testing.T, c net.Conn, r io.Reader, send io.Reader, size int64, want, wantGot [32]byte, got <-chan [32]byte) {
	t.Helper()
	werr := sendAndHalfClose(c, send)
	if r == nil {
		r = c
	}
	s, n, err := sum(r)
	if err != nil || n != size || s != want {
		t.Fatalf("client read %d bytes (%v), checksum ok %v", n, err, s == want)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != wantGot {
		t.Fatal("backend got other bytes")
	}
}

// sendAndHalfClose copies send to c and then half-closes it, in the background; the
// channel gets the copy's or the half-close's error.
func sendAndHalfClose(c net.Conn, send io.Reader) <-chan error {
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, send)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	return werr
}

// readSmall reads at most 512 bytes at a time.
type readSmall struct{ r io.Reader }

func (s readSmall) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), 512)]) }

// A client that talks before the backend is connected (an early talker, or a pipelining
// one) loses nothing: its bytes wait in its socket until the relay starts.
func TestEarlyTalker(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	c, r := dial(t, f.addr)
	io.WriteString(c, "EHLO early\r\nNOOP\r\n")
	if got := readLine(t, r); got != "220 mta ESMTP\r\n" {
		t.Fatalf("got %q", got)
	}
	for _, want := range []string{"250 mta EHLO early\r\n", "250 mta NOOP\r\n"} {
		if got := readLine(t, r); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// 100 dialogues at once each get their own answers.
func TestParallelDialogues(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", f.addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "220 ") {
				errs <- fmt.Errorf("banner %q %v", l, err)
				return
			}
			for j := range 5 {
				line := fmt.Sprintf("NOOP %d-%d\r\n", i, j)
				io.WriteString(c, line)
				if l, err := r.ReadString('\n'); err != nil || l != "250 mta "+line {
					errs <- fmt.Errorf("got %q %v, want %q", l, err, "250 mta "+line)
					return
				}
			}
			io.WriteString(c, "QUIT\r\n")
			if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "221 ") {
				errs <- fmt.Errorf("QUIT: %q %v", l, err)
				return
			}
			if _, err := r.ReadByte(); err != io.EOF {
				errs <- fmt.Errorf("after 221: %v, want EOF", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, func() bool { return len(f.log.conns()) == 100 })
}

// On an upgrade the node closes its listener while a successor holds a copy of the socket:
// Serve returns (net.ErrClosed) and accepts nothing more, so the connections that arrive
// from then on wait in the socket's queue for the successor. (The event loops accept on a
// duplicate of the descriptor: closing the Listener alone does not stop them.)
func TestClosedListenerLeavesTheQueueToASuccessor(t *testing.T) {
	m := newMTA(t, "mta", false)
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr()}}})
	l, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File() // the successor's copy
	if err != nil {
		t.Fatal(err)
	}
	succ, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer succ.Close()
	s := New(Options{Frontend: config.Frontend{Name: "mx", Pool: "mx"}, View: tb.View, Hostname: "lb.test",
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	defer s.Close()
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	c, r := dial(t, l.Addr().String())
	if got := readLine(t, r); got != "220 mta ESMTP\r\n" {
		t.Fatalf("got %q", got)
	}
	c.Close()
	l.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve returned %v, want net.ErrClosed", err)
	}
	c2, _ := dial(t, l.Addr().String())
	succ.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
	got, err := succ.Accept()
	if err != nil {
		t.Fatalf("the successor found no connection in the queue: %v", err)
	}
	defer got.Close()
	if got.RemoteAddr().String() != c2.LocalAddr().String() {
		t.Fatalf("successor got %v, want %v", got.RemoteAddr(), c2.LocalAddr())
	}
}

// A session stopped while its dial is in flight gives the backend's pick back: the
// backend's and pool's active counts return to 0.
func TestCloseDuringDialUndoesThePick(t *testing.T) {
	bh := blackholeAddr(t)
	tb := view(t, config.Pool{Name: "mx", ConnectTimeout: config.Duration(time.Minute), Backends: []config.Backend{{Address: bh}}})
	f := serve(t, tb, config.Frontend{Pool: "mx"}, nil)
	st := tb.View().Backend(pool.Key{Pool: "mx", Addr: bh}).Stats
	dial(t, f.addr)
	waitFor(t, func() bool { return st.Active.Load() == 1 })
	f.srv.Close()
	if n, p := st.Active.Load(), tb.View().Pool("mx").Stats.Active.Load(); n != 0 || p != 0 {
		t.Fatalf("after Close: backend active %d, pool active %d, want 0", n, p)
	}
}

// A client slower than its backend's stream of short writes: what the client's socket
// does not take waits in mxlb (a pooled buffer, then the kernel's pipe for the bulk that
// piles up behind it) and arrives whole and in order.
func TestSlowClientBehindShortWrites(t *testing.T) {
	const size, chunk = 8 << 20, 1000
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		src := stream(3, size)
		buf := make([]byte, chunk)
		for {
			n, _ := io.ReadFull(src, buf)
			if n == 0 {
				break
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	tb := view(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: l.Addr().String()}}})
	// A stalled relay ends at the idle timeout (the client then reads a short stream).
	f := serve(t, tb, config.Frontend{Pool: "mx", IdleTimeout: config.Duration(30 * time.Second)}, nil)
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want, _, _ := sum(stream(3, size))
	s, n, err := sum(readSmall{c})
	if err != nil || n != size || s != want {
		t.Fatalf("client read %d bytes (%v), checksum ok %v", n, err, s == want)
	}
	c.(*net.TCPConn).CloseWrite()
	waitFor(t, func() bool { return len(f.log.conns()) == 1 })
	if l := f.log.conns()[0]; l["bytes_out"].(float64) != size || l["outcome"] != "ok" {
		t.Fatalf("log %v", l)
	}
}

// A listener on a wildcard address: the PROXY header names the address the client
// reached (asked of the kernel per connection), not 0.0.0.0.
func TestWildcardListenerProxyHeaderHasTheRealAddress(t *testing.T) {
	m := newMTA(t, "mta", true)
	tb := view(t, config.Pool{Name: "mx", ProxyProtocol: "v1", Backends: []config.Backend{{Address: m.addr()}}})
	l, err := Listen(context.Background(), "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	s := New(Options{Frontend: config.Frontend{Name: "mx", Pool: "mx"}, View: tb.View, Hostname: "lb.test",
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	defer func() { s.Close(); <-done }()
	c, r := dial(t, fmt.Sprintf("127.0.0.1:%d", port))
	if got := readLine(t, r); got != "220 mta ESMTP\r\n" {
		t.Fatalf("got %q", got)
	}
	h := <-m.proxy
	if got, want := h.DestinationAddr.String(), fmt.Sprintf("127.0.0.1:%d", port); got != want {
		t.Fatalf("PROXY destination %s, want %s", got, want)
	}
	if got := h.SourceAddr.String(); got != c.LocalAddr().String() {
		t.Fatalf("PROXY source %s, want %s", got, c.LocalAddr())
	}
}

// IPv6 both sides: the client's and the listener's addresses reach the backend whole in
// a PROXY v2 header.
func TestIPv6ProxyV2(t *testing.T) {
	l, err := Listen(context.Background(), "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	m := newMTA(t, "mta", true)
	tb := view(t, config.Pool{Name: "mx", ProxyProtocol: "v2", Backends: []config.Backend{{Address: m.addr()}}})
	s := New(Options{Frontend: config.Frontend{Name: "mx", Pool: "mx"}, View: tb.View, Hostname: "lb.test",
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	defer func() { s.Close(); <-done }()
	c, r := dial(t, l.Addr().String())
	if got := readLine(t, r); got != "220 mta ESMTP\r\n" {
		t.Fatalf("got %q", got)
	}
	h := <-m.proxy
	if got, want := h.SourceAddr.String(), c.LocalAddr().String(); got != want {
		t.Fatalf("PROXY source %s, want %s", got, want)
	}
	if got, want := h.DestinationAddr.String(), l.Addr().String(); got != want {
		t.Fatalf("PROXY destination %s, want %s", got, want)
	}
}
