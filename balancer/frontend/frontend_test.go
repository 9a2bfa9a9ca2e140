package frontend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mxtest "github.com/mxlb/mxlb/internal/testutil"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// reply is a Reply for the tests.
type reply string

func (r reply) Line(host string) []byte { return []byte(string(r) + " " + host + "\r\n") }
func (r reply) String() string          { return string(r) }

var replies = Replies{Busy: reply("421 4.3.2 busy"), TooMany: reply("421 4.7.0 too many"),
	Rate: reply("421 4.7.0 rate"), Draining: reply("421 4.3.2 draining"), Shutdown: reply("421 4.3.2 shutdown")}

// echo is a Handler whose sessions greet, then echo lines until the client closes.
type echo struct {
	mu      sync.Mutex
	refused []string // why, per refusal
}

func (h *echo) Open(c *Conn) Session { return &echoSession{c: c} }

func (h *echo) Refused(_ *Conn, _ Reply, why string) {
	h.mu.Lock()
	h.refused = append(h.refused, why)
	h.mu.Unlock()
}

type echoSession struct{ c *Conn }

func (e *echoSession) Serve() {
	defer e.c.Release()
	defer e.c.Client.Close()
	io.WriteString(e.c.Client, "220 echo\r\n")
	io.Copy(e.c.Client, e.c.Client)
}
func (e *echoSession) Drain() {}
func (e *echoSession) Abort() { e.c.Client.Close() }

type fixture struct {
	s    *Server
	h    *echo
	addr string
}

func start(t *testing.T, fe config.Frontend, b *Budget) *fixture {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if b == nil {
		b = NewBudget(func() int { return 0 }) // no budget unless a test wants one
	}
	h := &echo{}
	s := New(Options{Frontend: fe, Handler: h, Replies: replies, Hostname: "lb.test",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Budget: b})
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return &fixture{s: s, h: h, addr: l.Addr().String()}
}

// open connects and returns the first line the server sent.
func open(t *testing.T, addr string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, line)
	}
	return c, r, line
}

// expectRefused checks a refusal: the reply, then a FIN (EOF), not a reset.
func expectRefused(t *testing.T, addr, want string) {
	t.Helper()
	c, r, line := open(t, addr)
	if line != want+" lb.test\r\n" {
		t.Fatalf("got %q, want %q", line, want)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("want EOF after the refusal, got %v", err)
	}
	c.Close() // as a client does after a 421; the refusal then ends
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	mxtest.WaitFor(t, 10*time.Second, what, cond)
}

func TestDrainRefusesNewSessionsAndLetsOpenOnesFinish(t *testing.T) {
	f := start(t, config.Frontend{}, nil)
	c, r, line := open(t, f.addr)
	if line != "220 echo\r\n" {
		t.Fatalf("banner %q", line)
	}

	f.s.SetDraining(true)
	expectRefused(t, f.addr, "421 4.3.2 draining")
	wantRefusals(t, f.s, "draining")
	// The session opened before the drain goes on.
	io.WriteString(c, "NOOP\r\n")
	if got, _ := r.ReadString('\n'); got != "NOOP\r\n" {
		t.Fatalf("open session after drain: %q", got)
	}

	f.s.SetDraining(false)
	if _, _, line := open(t, f.addr); line != "220 echo\r\n" {
		t.Fatalf("after undrain: %q", line)
	}
	// Refused is told after the close, which the client may see first.
	waitFor(t, "refusal reported", func() bool {
		f.h.mu.Lock()
		defer f.h.mu.Unlock()
		return len(f.h.refused) == 1 && f.h.refused[0] == "draining"
	})
}

func TestLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fe     config.Frontend
		budget int // descriptor limit; 0: no budget
		admit  int // sessions admitted before the refusal
		want   string
		reason string // counted in Refusals
	}{
		{"maxconn", config.Frontend{MaxConn: 2}, 0, 2, "421 4.3.2 busy", "maxconn"},
		{"max_conn_per_ip", config.Frontend{MaxConnPerIP: 3}, 0, 3, "421 4.7.0 too many", "max_conn_per_ip"},
		{"rate_per_ip", config.Frontend{RatePerIP: 2}, 0, 2, "421 4.7.0 rate", "rate_per_ip"},
		// limit 10: reserve min(max(256, 1), 5) = 5 leaves 5 descriptors: 2 sessions of 2.
		{"maxconn 0 is the descriptor budget", config.Frontend{}, 10, 2, "421 4.3.2 busy", "descriptors"},
		// An explicit maxconn is the operator's word, above the budget.
		{"explicit maxconn beats the budget", config.Frontend{MaxConn: 3}, 10, 3, "421 4.3.2 busy", "maxconn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b *Budget
			if tc.budget > 0 {
				b = NewBudget(func() int { return tc.budget })
			}
			f := start(t, tc.fe, b)
			for i := range tc.admit {
				if _, _, line := open(t, f.addr); line != "220 echo\r\n" {
					t.Fatalf("session %d: %q", i, line)
				}
			}
			expectRefused(t, f.addr, tc.want)
			wantRefusals(t, f.s, tc.reason)
		})
	}
}

// wantRefusals checks that s counted exactly one refusal, by reason (the metric
// mxlb_frontend_refused_total: refusals were only log lines).
func wantRefusals(t *testing.T, s *Server, reason string) {
	t.Helper()
	got := s.Refusals()
	for i, n := range got {
		want := uint64(0)
		if RefusalReasons[i] == reason {
			want = 1
		}
		if n != want {
			t.Errorf("Refusals %v (%v); want one %s", got, RefusalReasons, reason)
			return
		}
	}
}

func TestReleaseFreesTheSlot(t *testing.T) {
	b := NewBudget(func() int { return 10 })
	f := start(t, config.Frontend{MaxConnPerIP: 1}, b)
	c, _, _ := open(t, f.addr)
	expectRefused(t, f.addr, "421 4.7.0 too many")
	c.Close()
	waitFor(t, "release", func() bool { return f.s.Active() == 0 && b.Used() == 0 })
	if _, _, line := open(t, f.addr); line != "220 echo\r\n" {
		t.Fatalf("after release: %q", line)
	}
}

func TestAvailable(t *testing.T) {
	for _, tc := range []struct{ limit, want int }{
		{10, 5},           // tiny: half is kept back
		{1024, 768},       // 256 kept back
		{20000, 18000},    // a tenth kept back: 9,000 L4 sessions
		{1 << 20, 943719}, // 1,048,576 - 104,857
	} {
		if got := Available(tc.limit); got != tc.want {
			t.Errorf("Available(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

func TestShortage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.EMFILE)}, true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("socket", syscall.ENFILE)}, true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ENOBUFS)}, true},
		{fmt.Errorf("wrapped: %w", syscall.ENOMEM), true},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, false},
		{context.DeadlineExceeded, false},
	} {
		if got := Shortage(tc.err); got != tc.want {
			t.Errorf("Shortage(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// flakyListener fails Accept with errs, one each, before accepting from the real one.
type flakyListener struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		l.mu.Unlock()
		return nil, err
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// Out of descriptors, buffers or memory, accept backs off and goes on; it never ends the
// frontend.
func TestAcceptSurvivesShortage(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: l}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		fl.errs = append(fl.errs, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", e)})
	}
	s := New(Options{Handler: &echo{}, Replies: replies, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Budget: NewBudget(func() int { return 0 })})
	done := make(chan error, 1)
	go func() { done <- s.Serve(fl) }()
	_, _, line := open(t, l.Addr().String())
	if line != "220 echo\r\n" {
		t.Fatalf("got %q", line)
	}
	s.Close()
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
}

func TestShutdownRefusesNewAndWaits(t *testing.T) {
	f := start(t, config.Frontend{}, nil)
	c, r, _ := open(t, f.addr)
	shut := make(chan error, 1)
	go func() { shut <- f.s.Shutdown(context.Background()) }()
	waitFor(t, "listener closed", func() bool {
		c2, err := net.Dial("tcp", f.addr)
		if err == nil {
			c2.Close()
		}
		return err != nil
	})
	io.WriteString(c, "NOOP\r\n")
	if got, _ := r.ReadString('\n'); got != "NOOP\r\n" {
		t.Fatalf("open session during shutdown: %q", got)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a session open", err)
	default:
	}
	c.Close()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

func TestShutdownDeadlineAborts(t *testing.T) {
	f := start(t, config.Frontend{}, nil)
	_, r, _ := open(t, f.addr)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.s.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("session still open")
	}
	if n := f.s.Active(); n != 0 {
		t.Fatalf("%d sessions after Shutdown", n)
	}
}

// Serve after Close closes the listener and returns at once.
func TestServeAfterClose(t *testing.T) {
	s := New(Options{Handler: &echo{}, Replies: replies})
	s.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("got %v", err)
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("listener left open: %v", err)
	}
}

// TestBudgetReadsTheLimitOnce: admissions read a cached limit, not getrlimit each time.
func TestBudgetReadsTheLimitOnce(t *testing.T) {
	var reads atomic.Int32
	b := NewBudget(func() int { reads.Add(1); return 1000 })
	for range 1000 {
		if !b.fits(2) {
			t.Fatal("2 descriptors do not fit under 1000")
		}
	}
	if n := reads.Load(); n != 1 {
		t.Fatalf("the limit was read %d times for 1000 admissions, want 1", n)
	}
}

// AdmitTo admits into the mode's own Conn with Admit's limits; a refused Conn still has
// its address, frontend and start (the mode logs the refusal with them) and holds nothing.
func TestAdmitToUsesTheCallersConn(t *testing.T) {
	b := NewBudget(func() int { return 10 })
	s := New(Options{Frontend: config.Frontend{MaxConnPerIP: 1}, Handler: &echo{}, Replies: replies, Hostname: "lb.test",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Budget: b})
	defer s.Close()
	ip := netip.MustParseAddr("::ffff:198.18.0.1")
	now := time.Now()
	var c1, c2 Conn
	if r, why := s.AdmitTo(&c1, ip, now); r != nil {
		t.Fatalf("refused: %v %s", r, why)
	}
	if c1.IP != ip.Unmap() || c1.Start != now || c1.Frontend == nil || s.Active() != 1 || b.Used() == 0 {
		t.Fatalf("admitted conn %v %v %v, active %d, budget %d", c1.IP, c1.Start, c1.Frontend, s.Active(), b.Used())
	}
	r, why := s.AdmitTo(&c2, ip, now.Add(time.Second))
	if r == nil || why != "limit" || !c2.Start.Equal(now.Add(time.Second)) || c2.IP != ip.Unmap() || s.Active() != 1 {
		t.Fatalf("second conn from the ip: %v %q %v %v, active %d", r, why, c2.IP, c2.Start, s.Active())
	}
	c1.Release()
	if s.Active() != 0 || b.Used() != 0 {
		t.Fatalf("after release: active %d, budget %d", s.Active(), b.Used())
	}
}
