package testutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a testing.TB that records Fatalf instead of stopping the goroutine.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper()                           {}
func (r *recorder) Fatalf(format string, args ...any) { r.msg = fmt.Sprintf(format, args...) }

func TestWaitFor(t *testing.T) {
	n := 0
	WaitFor(t, time.Second, "three polls", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("polled %d times", n)
	}
	r := &recorder{TB: t}
	WaitFor(r, 20*time.Millisecond, "never", func() bool { return false })
	if !strings.Contains(r.msg, "waiting for never") {
		t.Fatalf("a condition that never holds did not fail: %q", r.msg)
	}
}

// The refused address refuses connections, and no listener can take its port while the
// test runs (a closed listener's port could be taken, which made a balancer test proxy to
// itself).
func TestRefusedAddr(t *testing.T) {
	a := RefusedAddr(t)
	if c, err := net.Dial("tcp", a); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial %s: %v, want connection refused", a, err)
	}
	if l, err := net.Listen("tcp", a); err == nil {
		l.Close()
		t.Fatalf("a listener took the refused address %s", a)
	}
}

// TestFreePortNeverTwice: servers started one after another without waiting for the
// first to bind must not get one port. A port from "127.0.0.1:0" closed at once is offered
// again by the kernel (an integration test's agent lost its port so to the next sink).
func TestFreePortNeverTwice(t *testing.T) {
	lo, hi := portWindow()
	seen := map[int]bool{}
	for range 200 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if p < lo || p > hi {
			t.Fatalf("port %d outside %d-%d", p, lo, hi)
		}
	}
}

// TestFreePortIsOutsideTheEphemeralRange: a port the kernel may give to any connect(2)
// could be taken before its server binds it.
func TestFreePortIsOutsideTheEphemeralRange(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skip(err)
	}
	var elo, ehi int
	if _, err := fmt.Sscan(string(b), &elo, &ehi); err != nil {
		t.Fatal(err)
	}
	p := FreePort(t)
	if p >= elo && p <= ehi {
		t.Fatalf("port %d inside the ephemeral range %d-%d", p, elo, ehi)
	}
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(p)))
	if err != nil {
		t.Fatalf("FreePort's %d: %v", p, err)
	}
	l.Close()
}
