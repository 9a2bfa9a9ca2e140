package frontend

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/mxlb/mxlb/config"
)

// fdHandler is a Handler for ServeFD's refusals.
type fdHandler struct{ refused chan string }

func (h *fdHandler) Open(*Conn) Session { panic("ServeFD opens nothing") }
func (h *fdHandler) Refused(_ *Conn, _ Reply, why string) {
	h.refused <- why
}

// TestServeFD: connections come as descriptors with the peer's address; a mode's
// refusal (RefuseAsync) answers the skeleton's way; Close ends the loop.
func TestServeFD(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &fdHandler{refused: make(chan string, 1)}
	s := New(Options{Frontend: config.Frontend{Name: "mx", MaxConn: 1}, Handler: h, Replies: replies, Hostname: "lb.test",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Budget: NewBudget(func() int { return 0 })})
	type acc struct {
		fd   int
		peer netip.AddrPort
	}
	got := make(chan acc, 2)
	done := make(chan error, 1)
	go func() {
		done <- s.ServeFD(l, func(fd int, peer netip.AddrPort) { got <- acc{fd, peer} })
	}()

	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	a := <-got
	if want := c1.LocalAddr().(*net.TCPAddr).AddrPort(); a.peer != want {
		t.Errorf("peer %v, want %v", a.peer, want)
	}
	if got, want := Getsockname(a.fd), l.Addr().(*net.TCPAddr).AddrPort(); got != want {
		t.Errorf("Getsockname %v, want %v", got, want)
	}
	// The descriptor is the connection's: what is written on it reaches the client.
	f := os.NewFile(uintptr(a.fd), "c1")
	f.WriteString("220 fd\r\n")
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c1, buf); err != nil || string(buf) != "220 fd\r\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	var c Conn
	if r, why := s.AdmitTo(&c, a.peer.Addr(), s.opts.Now()); r != nil {
		t.Fatalf("first connection refused: %s", why)
	}
	// maxconn 1: a second is refused, the skeleton's way.
	c2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	b := <-got
	var rc Conn
	r, why := s.AdmitTo(&rc, b.peer.Addr(), s.opts.Now())
	if r == nil {
		t.Fatal("second connection admitted over maxconn 1")
	}
	rf := os.NewFile(uintptr(b.fd), "c2")
	fc, err := net.FileConn(rf) // a net.Conn of the descriptor, as a mode makes one
	rf.Close()
	if err != nil {
		t.Fatal(err)
	}
	rc.Client = fc
	s.RefuseAsync(&rc, r, why)
	line, err := io.ReadAll(c2)
	if err != nil || string(line) != "421 4.3.2 busy lb.test\r\n" {
		t.Errorf("refused client read %q, %v", line, err)
	}
	c2.Close() // the refusal drains until the client closes
	if w := <-h.refused; w != "limit" {
		t.Errorf("Refused told %q, want limit", w)
	}
	f.Close()
	c.Release()
	s.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeFD returned %v", err)
	}
}

// TestServeFDStopsWhenItsListenerCloses: the node closes a listener it hands to its
// successor itself; the loop, which waits on a duplicate, ends then with net.ErrClosed
// (as Accept would), and does not take the connections queued for the successor.
func TestServeFDStopsWhenItsListenerCloses(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	succ, err := DupFD(l) // the successor's copy
	if err != nil {
		t.Fatal(err)
	}
	sf := os.NewFile(uintptr(succ), "successor")
	defer sf.Close()
	s := New(Options{Frontend: config.Frontend{Name: "mx"}, Handler: &fdHandler{}, Replies: replies,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Budget: NewBudget(func() int { return 0 })})
	done := make(chan error, 1)
	taken := make(chan int, 1)
	go func() { done <- s.ServeFD(l, func(fd int, _ netip.AddrPort) { taken <- fd }) }()
	addr := l.Addr().String()
	first, err := net.Dial("tcp", addr) // the loop runs once it took one
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	os.NewFile(uintptr(<-taken), "first").Close()
	l.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ServeFD returned %v, want net.ErrClosed", err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sl, err := net.FileListener(sf)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	sc, err := sl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	select {
	case fd := <-taken:
		t.Errorf("descriptor %d taken after the listener closed", fd)
	default:
	}
	s.Close()
}

// TestServeFDNeedsASocket: a wrapper without the socket is ErrNoFD, untouched.
func TestServeFDNeedsASocket(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := New(Options{Frontend: config.Frontend{Name: "mx"}, Handler: &fdHandler{}, Replies: replies,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	w := struct{ net.Listener }{l}
	if err := s.ServeFD(w, func(int, netip.AddrPort) {}); err != ErrNoFD {
		t.Fatalf("ServeFD of a wrapper: %v, want ErrNoFD", err)
	}
	s.Close()
}
