package l7

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
)

// TestBannerOnlyClients: a client that has read the banner and sent nothing waits
// without a go-smtp session; it still gets the idle timeout's 421 4.4.2, a Shutdown's
// 421 4.3.2, and its session when it speaks, also when it spoke before the banner.
func TestBannerOnlyClients(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})

	t.Run("early talker", func(t *testing.T) {
		f := startFront(t, tb, config.Frontend{}, nil)
		rc := dialRaw(t, f.addr)
		rc.write("EHLO early.test\r\n")
		if r := rc.expect(t, "220 "); r != "220 mxlb.test ESMTP Service Ready" {
			t.Errorf("banner %q", r)
		}
		for !strings.HasPrefix(rc.reply(t), "250 ") {
		}
		rc.write("QUIT\r\n")
		rc.expect(t, "221")
	})
	t.Run("idle timeout", func(t *testing.T) {
		f := startFront(t, tb, config.Frontend{IdleTimeout: config.Duration(200 * time.Millisecond)}, nil)
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220 ")
		rc.expect(t, "421 4.4.2")
		if !rc.closed(5 * time.Second) {
			t.Error("connection still open after the timeout")
		}
	})
	t.Run("close", func(t *testing.T) {
		f := startFront(t, tb, config.Frontend{}, nil)
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220 ")
		f.s.Close()
		if !rc.closed(5 * time.Second) {
			t.Error("parked connection still open after Close")
		}
	})
	t.Run("shutdown", func(t *testing.T) {
		f := startFront(t, tb, config.Frontend{}, nil)
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220 ")
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done <- f.s.Shutdown(ctx)
		}()
		rc.expect(t, "421 4.3.2")
		rc.c.Close()
		if err := <-done; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
}

// TestBannerOnlyClientsHoldNoGoroutine: connections that have read the banner and sent
// nothing cost no goroutine each (they wait parked in one epoll set); each still gets its
// session when it speaks.
func TestBannerOnlyClientsHoldNoGoroutine(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	warm := dialRaw(t, f.addr) // starts what is started once
	warm.expect(t, "220 ")
	mxtest.WaitFor(t, 5*time.Second, "the first session parked", func() bool { return f.s.parker.count() == 1 })
	before := runtime.NumGoroutine()
	const n = 50
	var rcs []*rawClient
	for range n {
		rc := dialRaw(t, f.addr)
		rc.expect(t, "220 ")
		rcs = append(rcs, rc)
	}
	mxtest.WaitFor(t, 5*time.Second, "every session parked", func() bool { return f.s.parker.count() == n+1 })
	if d := runtime.NumGoroutine() - before; d > n/10 {
		t.Errorf("%d banner-only connections added %d goroutines", n, d)
	}
	for _, rc := range rcs {
		rc.write("EHLO c.test\r\n")
		for !strings.HasPrefix(rc.reply(t), "250 ") {
		}
		rc.write("QUIT\r\n")
		rc.expect(t, "221")
	}
}

// TestParkedTimeoutsEachTheirOwn: parked clients time out at their own deadlines, also
// when one parked later (after a reload shortened the timeout) is due before those parked
// earlier; a client that speaks in time is served, its deadline forgotten.
func TestParkedTimeoutsEachTheirOwn(t *testing.T) {
	m := newFakeMTA(t, "a", faultNone, nil)
	tb := table(t, config.Pool{Name: "mx", Backends: backends(m.addr())})
	long := config.Frontend{Name: "test", Pool: "mx", IdleTimeout: config.Duration(time.Hour),
		CommandTimeout: config.Duration(time.Hour)}
	f := startFront(t, tb, long, nil)
	a := dialRaw(t, f.addr)
	a.expect(t, "220")
	c := dialRaw(t, f.addr)
	c.expect(t, "220")
	mxtest.WaitFor(t, 5*time.Second, "a and c parked", func() bool { return f.s.parker.count() == 2 })
	c.write("EHLO c.test\r\n")
	c.expect(t, "250")
	c.write("QUIT\r\n")
	c.expect(t, "221")

	short := long
	short.CommandTimeout = config.Duration(100 * time.Millisecond)
	f.s.SetFrontend(defaulted(short))
	b := dialRaw(t, f.addr)
	b.expect(t, "220")
	b.expect(t, "421 4.4.2")
	if !b.closed(5 * time.Second) {
		t.Error("b not closed after its timeout")
	}
	if n := f.s.parker.count(); n != 1 {
		t.Errorf("%d parked after b's timeout, want 1 (a, whose timeout is an hour)", n)
	}
	a.write("QUIT\r\n")
	a.expect(t, "221")
}
