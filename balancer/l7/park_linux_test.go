package l7

import (
	"net"
	"testing"
	"time"

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
