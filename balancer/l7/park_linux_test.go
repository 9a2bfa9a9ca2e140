package l7

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/emersion/go-smtp"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// TestSilentLeaverCostsNoSession: a client that reads the banner and leaves without a
// byte is closed by the parker, never handed to the SMTP server (no goroutine, reader or
// wire for it); one that sends QUIT with its FIN still gets the 221.
func TestSilentLeaverCostsNoSession(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	const n = 20
	for range n {
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220 ")
		mxtest.WaitFor(t, 5*time.Second, "the client parked", func() bool { return f.s.parker.count() == 1 })
		rc.c.Close()
		mxtest.WaitFor(t, 5*time.Second, "the session released", func() bool { return f.s.Active() == 0 })
	}
	if h, g := f.s.handoffs.Load(), f.s.silentGone.Load(); h != 0 || g != n {
		t.Errorf("%d silent leavers: %d handed to the SMTP server, %d closed parked; want 0, %d", n, h, g, n)
	}
	rc := dialRaw(t, f.addr)
	rc.expect(t, "220 ")
	mxtest.WaitFor(t, 5*time.Second, "the client parked", func() bool { return f.s.parker.count() == 1 })
	rc.write("QUIT\r\n")
	rc.c.(*net.TCPConn).CloseWrite()
	rc.expect(t, "221")
	mxtest.WaitFor(t, 5*time.Second, "the session released", func() bool { return f.s.Active() == 0 })
	if h := f.s.handoffs.Load(); h != 1 {
		t.Errorf("QUIT with FIN: %d hand-offs, want 1", h)
	}
}

// TestUnparkedClientsWaitOnAGoroutine: a client that cannot be parked (the banner did not
// fit in its socket at once; the parker is stopped) gets the rest of its banner and its
// session from a goroutine of its own, with the same first-byte timeout, and Close ends
// it while it waits.
func TestUnparkedClientsWaitOnAGoroutine(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})

	t.Run("banner larger than the socket takes", func(t *testing.T) {
		host := strings.Repeat("h", 8<<20) // more than loopback buffers hold
		f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.Hostname = host })
		rc := dialRaw(t, f.addr)
		if r := rc.expect(t, "220 "); r != "220 "+host+" ESMTP Service Ready" {
			t.Errorf("banner of %d bytes, want %d", len(r), len(host)+24)
		}
		if n := f.s.parker.count(); n != 0 {
			t.Errorf("%d parked, want 0: the banner was still being written", n)
		}
		rc.write("QUIT\r\n")
		rc.expect(t, "221")
		mxtest.WaitFor(t, 5*time.Second, "the session released", func() bool { return f.s.Active() == 0 })
	})
	t.Run("parker stopped", func(t *testing.T) {
		fe := config.Frontend{CommandTimeout: config.Duration(time.Hour), IdleTimeout: config.Duration(time.Hour)}
		f := startFront(t, tb, fe, nil)
		f.s.parker.stop()
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220 mxlb.test ESMTP")
		rc.write("EHLO c.test\r\n")
		for !strings.HasPrefix(rc.reply(t), "250 ") {
		}
		rc.write("QUIT\r\n")
		rc.expect(t, "221")

		short := defaulted(config.Frontend{Name: "test", Pool: "mx", CommandTimeout: config.Duration(100 * time.Millisecond)})
		f.s.SetFrontend(short)
		late := dialRaw(t, f.addr)
		late.expect(t, "220 ")
		late.expect(t, "421 4.4.2")
		if !late.closed(5 * time.Second) {
			t.Error("not closed after its first-byte timeout")
		}
		late.c.Close() // the parting reply's drain ends

		f.s.SetFrontend(defaulted(fe))
		waiting := dialRaw(t, f.addr)
		waiting.expect(t, "220 ")
		mxtest.WaitFor(t, 5*time.Second, "one session open", func() bool { return f.s.Active() == 1 })
		f.s.Close()
		if !waiting.closed(5 * time.Second) {
			t.Error("waiting client still open after Close")
		}
	})
}

// TestDualStackWildcardIdentity: on a wildcard IPv6 listener (dual-stack), an IPv4
// client comes as an IPv4-mapped address; the backend learns its address and port, and
// the address and port it connected to (asked of the kernel: the listener's is "::"), as
// through a listener on one address.
func TestDualStackWildcardIdentity(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	l, err := net.Listen("tcp", "[::]:0")
	if err != nil {
		t.Skipf("no IPv6 wildcard listener: %v", err)
	}
	s := New(Options{Frontend: defaulted(config.Frontend{Name: "test", Pool: "mx"}), View: tb.View, Hostname: "mxlb.test",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), TempDir: t.TempDir()})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	defer func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	sc := smtp.NewClient(c)
	defer sc.Close()
	if err := sc.SendMail("a@example.test", []string{"b@example.test"}, strings.NewReader("Subject: x\r\n\r\nhi\r\n")); err != nil {
		t.Fatal(err)
	}
	var xl string
	for _, line := range x.received() {
		if strings.HasPrefix(line, "XCLIENT ") {
			xl = line
		}
	}
	for _, want := range []string{"ADDR=127.0.0.1 ", fmt.Sprintf("PORT=%d ", c.LocalAddr().(*net.TCPAddr).Port),
		"DESTADDR=127.0.0.1 ", fmt.Sprintf("DESTPORT=%d", port)} {
		if !strings.Contains(xl+" ", want) {
			t.Errorf("XCLIENT line %q lacks %s", xl, want)
		}
	}
}

// TestWokenClientHasNoDelay: a parked client made a connection at its first byte sends
// its replies without Nagle's delay, as a net.Conn accepted by Go does.
func TestWokenClientHasNoDelay(t *testing.T) {
	s := New(Options{Frontend: defaulted(config.Frontend{Name: "test", Pool: "mx"}), Hostname: "mxlb.test",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer s.Close()
	a, b := tcpPair(t)
	f, err := b.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 0) // as accept4 gives it
	pk := &parked{li: &fdListener{s: s}, fd: int32(fd), idx: -1}
	ap := a.LocalAddr().(*net.TCPAddr).AddrPort()
	if r, _ := s.fs.AdmitTo(&pk.fc, ap.Addr(), time.Now()); r != nil {
		t.Fatal("not admitted")
	}
	pk.port = ap.Port()
	cc := s.wakeConn(pk)
	if cc == nil {
		t.Fatal("wakeConn failed")
	}
	defer cc.closeReal()
	var v int
	var gerr error
	cc.raw().Control(func(fd uintptr) { v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY) })
	if gerr != nil || v == 0 {
		t.Errorf("TCP_NODELAY %d (%v), want on", v, gerr)
	}
	if got := cc.RemoteAddr().String(); got != a.LocalAddr().String() {
		t.Errorf("RemoteAddr %s, want %s", got, a.LocalAddr())
	}
}

// TestParkedSize: a parked client is one allocation of the 144-byte size class (its
// frontend.Conn inside): a field more is 16 bytes more for every idle connection.
func TestParkedSize(t *testing.T) {
	if n := unsafe.Sizeof(parked{}); n > 144 {
		t.Errorf("parked is %d bytes, more than the 144-byte size class", n)
	}
}
