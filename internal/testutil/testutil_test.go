package testutil

import (
	"errors"
	"fmt"
	"net"
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
