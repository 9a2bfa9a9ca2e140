package l7

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/config"
	mxtest "github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/pool"
)

// pfScript is a Postfix-like backend: PIPELINING, XCLIENT answered with a new 220.
func pfScript() map[string]string {
	return map[string]string{
		"":        "220 pf ESMTP\r\n",
		"EHLO":    "250-pf\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PORT PROTO HELO DESTADDR DESTPORT\r\n250 8BITMIME\r\n",
		"XCLIENT": "220 pf ESMTP again\r\n",
		"DATA":    "354 go\r\n",
		".":       "250 2.0.0 Ok: queued as 4ABCD\r\n",
	}
}

// sendFrom delivers one message on its own connection from a 127.0.0.x address and
// returns the client's port.
func sendFrom(t *testing.T, addr string, ip byte, helo string) int {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot bind 127.0.0.%d: %v", ip, err)
	}
	sc := smtp.NewClient(c)
	defer sc.Close()
	if err := sc.Hello(helo); err != nil {
		t.Fatal(err)
	}
	if err := sc.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
		t.Fatal(err)
	}
	if err := sc.Quit(); err != nil {
		t.Fatal(err)
	}
	return c.LocalAddr().(*net.TCPAddr).Port
}

// TestBackendConnectionReusedAcrossSessions: with XCLIENT, the backend connection of a
// finished client session carries the next client's transaction: XCLIENT with the new
// client's attributes, EHLO with its name, then MAIL grouped with RCPT; no new
// connection, banner or first EHLO. While it waits in the pool it holds no buffers.
func TestBackendConnectionReusedAcrossSessions(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	sendFrom(t, f.addr, 9, "first.test")
	mxtest.WaitFor(t, 5*time.Second, "the backend connection pooled", func() bool { return f.s.reuse.idle() == 1 })
	f.s.reuse.mu.Lock()
	for _, cs := range f.s.reuse.conns {
		for _, bc := range cs {
			if bc.r != nil || bc.w.buf != nil {
				t.Error("an idle backend connection holds its buffers")
			}
		}
	}
	f.s.reuse.mu.Unlock()
	port := sendFrom(t, f.addr, 10, "second.test")
	if n := x.conns.Load(); n != 1 {
		t.Fatalf("two sessions opened %d backend connections, want 1", n)
	}
	got := x.received()
	var i int
	for i = len(got) - 1; i >= 0 && !strings.HasPrefix(got[i], "XCLIENT "); i-- {
	}
	if i < 0 || len(got) < i+4 {
		t.Fatalf("backend dialogue %q", got)
	}
	for _, want := range []string{"ADDR=127.0.0.10", fmt.Sprintf("PORT=%d", port), "HELO=second.test"} {
		if !strings.Contains(got[i], want) {
			t.Errorf("second XCLIENT %q lacks %s", got[i], want)
		}
	}
	if got[i+1] != "EHLO second.test" || !strings.HasPrefix(got[i+2], "MAIL FROM:<a@example.test>") {
		t.Errorf("after the second XCLIENT: %q", got[i:])
	}
	if recs := f.log.Records("txn"); len(recs) != 2 || recs[1]["attempts"] != 1.0 || recs[1]["outcome"] != "ok" {
		t.Errorf("txn log %v", recs)
	}
}

// TestPipelinedMailRcpt: towards a backend that offers PIPELINING, MAIL goes in one
// write with the first RCPT.
func TestPipelinedMailRcpt(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, nil)
	sendFrom(t, f.addr, 9, "first.test")
	x.mu.Lock()
	grouped := append([]string(nil), x.grouped...)
	x.mu.Unlock()
	if len(grouped) != 1 || !strings.HasPrefix(grouped[0], "MAIL FROM:<a@example.test>") {
		t.Errorf("commands sent grouped with the next: %q, want the MAIL", grouped)
	}
}

// TestStaleReusedConnectionRetriesFresh: an idle connection the backend has closed
// meanwhile fails at XCLIENT; the transaction goes on a fresh connection to the same
// backend, with no attempt counted, no failure logged, nothing reported to health, even
// with one attempt allowed.
func TestStaleReusedConnectionRetriesFresh(t *testing.T) {
	sc := pfScript()
	sc["!close"] = "" // the backend closes each connection after its message
	x := newRawMTA(t, sc)
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	var failing atomic.Int32
	f := startFront(t, tb, config.Frontend{}, func(o *Options) {
		o.MaxAttempts = 1
		o.PassiveFails = 1
		o.OnBackendFailing = func(k pool.Key, reason string) { failing.Add(1) }
	})
	sendFrom(t, f.addr, 9, "first.test")
	mxtest.WaitFor(t, 5*time.Second, "the backend closed its side", func() bool { return x.closes.Load() == 1 })
	sendFrom(t, f.addr, 10, "second.test")
	if n := x.conns.Load(); n != 2 {
		t.Errorf("backend connections %d, want 2 (the stale one, then a fresh one)", n)
	}
	if recs := f.log.Records("txn"); len(recs) != 2 || recs[1]["attempts"] != 1.0 || recs[1]["outcome"] != "ok" {
		t.Errorf("txn log %v", recs)
	}
	if n := len(f.log.Records("backend failed the transaction")); n != 0 || failing.Load() != 0 {
		t.Errorf("%d backend failures logged, %d reported to health; want none", n, failing.Load())
	}
}

// TestSessionIdleStaleRetriesFresh: within one client session, a kept backend
// connection the backend closed between two transactions is no attempt either: the
// second message goes through with one attempt allowed.
func TestSessionIdleStaleRetriesFresh(t *testing.T) {
	sc := pfScript()
	sc["!close"] = ""
	x := newRawMTA(t, sc)
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.MaxAttempts = 1 })
	c, err := smtp.Dial(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		if err := c.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		mxtest.WaitFor(t, 5*time.Second, "the backend closed its side", func() bool { return x.closes.Load() == int32(i+1) })
	}
	c.Quit()
}

// TestIdlePoolLimits: a PROXY-header backend's connections are not kept (one header per
// connection); kept ones are closed when their backend is drained, and when the node
// drains.
func TestIdlePoolLimits(t *testing.T) {
	t.Run("proxy not kept", func(t *testing.T) {
		m := newFakeMTA(t, "pp", faultNone, func(l net.Listener) net.Listener { return &proxyproto.Listener{Listener: l} })
		tb := table(t, config.Pool{Name: "mx", Backends: []config.Backend{{Address: m.addr(), Identity: "v2"}}})
		f := startFront(t, tb, config.Frontend{}, nil)
		sendFrom(t, f.addr, 9, "a.test")
		sendFrom(t, f.addr, 10, "b.test")
		if n := m.conns.Load(); n != 2 {
			t.Errorf("PROXY v2 backend: %d connections for 2 sessions, want 2", n)
		}
		if n := f.s.reuse.idle(); n != 0 {
			t.Errorf("%d idle kept", n)
		}
	})
	t.Run("backend drained", func(t *testing.T) {
		x := newRawMTA(t, pfScript())
		tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
		f := startFront(t, tb, config.Frontend{}, nil)
		sendFrom(t, f.addr, 9, "a.test")
		mxtest.WaitFor(t, 5*time.Second, "pooled", func() bool { return f.s.reuse.idle() == 1 })
		spec := tb.Spec()
		spec.Pools[0].Backends[0].State = "drain"
		tb.SetSpec(spec)
		mxtest.WaitFor(t, 10*time.Second, "the idle connection closed with QUIT", func() bool {
			return x.closes.Load() == 1 && f.s.reuse.idle() == 0
		})
		if got := x.received(); got[len(got)-1] != "QUIT" {
			t.Errorf("backend dialogue ends %q", got[len(got)-1])
		}
	})
	t.Run("node drained", func(t *testing.T) {
		x := newRawMTA(t, pfScript())
		tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
		f := startFront(t, tb, config.Frontend{}, nil)
		sendFrom(t, f.addr, 9, "a.test")
		mxtest.WaitFor(t, 5*time.Second, "pooled", func() bool { return f.s.reuse.idle() == 1 })
		f.s.SetDraining(true)
		if n := f.s.reuse.idle(); n != 0 {
			t.Errorf("%d idle kept after SetDraining", n)
		}
		mxtest.WaitFor(t, 5*time.Second, "the backend connection closed", func() bool { return x.closes.Load() == 1 })
	})
}

// An idle backend connection holds a descriptor of the process's session budget while it
// waits in the pool, and none once it is gone; with no room in the budget it is not kept.
func TestPooledConnectionsCountInTheBudget(t *testing.T) {
	x := newRawMTA(t, pfScript())
	tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x.addr())})
	budget := frontend.NewBudget(func() int { return 1000 })
	f := startFront(t, tb, config.Frontend{}, func(o *Options) { o.Budget = budget })
	sendFrom(t, f.addr, 9, "first.test")
	mxtest.WaitFor(t, 5*time.Second, "the backend connection pooled", func() bool { return f.s.reuse.idle() == 1 })
	mxtest.WaitFor(t, 5*time.Second, "the session's descriptors released", func() bool { return budget.Used() == 1 })
	f.s.reuse.drain(true)
	if n := budget.Used(); n != 0 {
		t.Fatalf("budget used %d after the pool emptied, want 0", n)
	}
	f.s.reuse.drain(false)

	full := frontend.NewBudget(func() int { return 2 }) // no room to hold anything
	x2 := newRawMTA(t, pfScript())
	tb2 := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", Backends: backends(x2.addr())})
	f2 := startFront(t, tb2, config.Frontend{MaxConn: 10}, func(o *Options) { o.Budget = full })
	sendFrom(t, f2.addr, 9, "first.test")
	mxtest.WaitFor(t, 5*time.Second, "the session's descriptors released", func() bool { return full.Used() == 0 })
	if n := f2.s.reuse.idle(); n != 0 {
		t.Fatalf("%d connections pooled with no room in the budget", n)
	}
}

// A pool's reuse_idle bounds the idle connections kept per backend: -1 keeps none, 1 at
// most one, whatever the frontend's default.
func TestPoolReuseIdle(t *testing.T) {
	for _, c := range []struct{ reuseIdle, sessions, want int }{{-1, 1, 0}, {1, 3, 1}} {
		x := newRawMTA(t, pfScript())
		tb := table(t, config.Pool{Name: "mx", ProxyProtocol: "xclient", ReuseIdle: c.reuseIdle, Backends: backends(x.addr())})
		f := startFront(t, tb, config.Frontend{}, nil)
		// Sessions open at the same time, so that each needs a connection of its own.
		cls := make([]*smtp.Client, c.sessions)
		for i := range cls {
			cl, err := smtp.Dial(f.addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.Hello("c.test"); err != nil {
				t.Fatal(err)
			}
			if err := cl.SendMail("a@example.test", []string{"b@example.test"}, bytes.NewReader(body8)); err != nil {
				t.Fatal(err)
			}
			cls[i] = cl
		}
		for _, cl := range cls {
			cl.Quit()
			cl.Close()
		}
		mxtest.WaitFor(t, 5*time.Second, "the sessions gone", func() bool { return f.s.Active() == 0 })
		if n := f.s.reuse.idle(); n != c.want {
			t.Errorf("reuse_idle %d, %d sessions: %d connections kept idle, want %d", c.reuseIdle, c.sessions, n, c.want)
		}
	}
}
