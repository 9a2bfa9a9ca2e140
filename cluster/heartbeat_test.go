package cluster

import (
	"testing"
	"time"
)

func TestHeartbeatTimings(t *testing.T) {
	for _, c := range []struct{ budget, interval, timeout time.Duration }{
		{time.Second, 100 * time.Millisecond, 400 * time.Millisecond},
		{300 * time.Millisecond, 30 * time.Millisecond, 120 * time.Millisecond},
		{0, 100 * time.Millisecond, 400 * time.Millisecond},
		{10 * time.Millisecond, 14 * time.Millisecond, 56 * time.Millisecond}, // MinFailoverBudget
	} {
		i, to := heartbeatTimings(c.budget)
		if i != c.interval || to != c.timeout {
			t.Errorf("budget %v: interval %v timeout %v, want %v %v", c.budget, i, to, c.interval, c.timeout)
		}
	}
}

// TestHeartbeatMarksSilentMemberUnreachable: a member cut off is unreachable after the
// heartbeat timeout (before or regardless of memberlist's verdict), and reachable again
// when its heartbeats come back.
func TestHeartbeatMarksSilentMemberUnreachable(t *testing.T) {
	netw := newTestNet()
	nodes := startNodes(t, 3, clusterOpts{netw: netw, budget: time.Second})
	waitMembers(t, nodes, 3)
	reachable := func(from *tnode, name string) bool {
		for _, m := range from.Members() {
			if m.Name == name {
				return m.Alive && m.Reachable
			}
		}
		return false
	}
	waitFor(t, 10*time.Second, "all reachable", func() bool {
		return reachable(nodes[0], nodes[2].Name()) && reachable(nodes[1], nodes[2].Name())
	})
	cut := time.Now()
	netw.partition(map[string]int{nodes[2].tr.addr: 1})
	waitFor(t, 10*time.Second, "node 3 unreachable from 1 and 2", func() bool {
		return !reachable(nodes[0], nodes[2].Name()) && !reachable(nodes[1], nodes[2].Name())
	})
	t.Logf("cut-off member unreachable after %v (heartbeat timeout 400ms, interval 100ms)", time.Since(cut).Round(time.Millisecond))
	for _, n := range nodes[:2] {
		n.memMu.Lock()
		answered := n.echo.answered
		n.memMu.Unlock()
		if !answered {
			t.Errorf("%s: its echo never came back: judged at the tick, not by the echo", n.Name())
		}
	}
	netw.heal()
	waitFor(t, 10*time.Second, "node 3 reachable again", func() bool {
		return reachable(nodes[0], nodes[2].Name()) && reachable(nodes[1], nodes[2].Name())
	})
}

// hbRun drives a watchdog with a fake clock: the loop runs every interval, except that a
// run may be late (the node starved).
type hbRun struct {
	w   *watchdog
	clk *fakeClock
}

func newHBRun() hbRun {
	interval, timeout := heartbeatTimings(time.Second)
	return hbRun{w: &watchdog{interval: interval, timeout: timeout}, clk: newFakeClock()}
}

// tick runs the loop one interval after the last run, late by late.
func (r hbRun) tick(late time.Duration) time.Time {
	due := r.clk.now().Add(r.w.interval)
	r.clk.advance(r.w.interval + late)
	r.w.ran(due, r.clk.now())
	return r.clk.now()
}

func TestWatchdogSilentMemberIsOverdue(t *testing.T) {
	r := newHBRun()
	last := r.clk.now()
	for range 4 {
		if at := r.tick(0); r.w.overdue(last, at, 0) {
			t.Fatalf("overdue after %v, timeout %v", at.Sub(last), r.w.timeout)
		}
	}
	if at := r.tick(0); !r.w.overdue(last, at, 0) {
		t.Fatalf("not overdue after %v of silence, timeout %v", at.Sub(last), r.w.timeout)
	}
}

// TestWatchdogSelfStarvedDoesNotAccuse: when this node's own loop ran 600 ms late, the
// member's silence over that stall is not held against it; once this node has run for
// the timeout without hearing from it, it is overdue.
func TestWatchdogSelfStarvedDoesNotAccuse(t *testing.T) {
	r := newHBRun()
	last := r.clk.now()
	r.tick(0)
	at := r.tick(600 * time.Millisecond) // starved: 800 ms since last heard
	if r.w.overdue(last, at, 0) {
		t.Fatalf("a node starved for 600 ms accuses a member silent for %v", at.Sub(last))
	}
	r.tick(0) // 300 ms of own running time
	if at := r.tick(0); r.w.overdue(last, at, 0) {
		t.Fatalf("overdue after 400 ms of own running time (not more than the timeout)")
	}
	if at := r.tick(0); !r.w.overdue(last, at, 0) {
		t.Fatalf("not overdue after 500 ms of own running time without a heartbeat")
	}
	// A stall before the member was last heard is no excuse for its silence after.
	last = r.clk.now()
	for range 5 {
		r.tick(0)
	}
	if !r.w.overdue(last, r.clk.now(), 0) {
		t.Fatal("an old stall still extends the deadline")
	}
	// memberlist's health score lends extra time.
	if r.w.overdue(last, r.clk.now(), 200*time.Millisecond) {
		t.Fatal("extra time not granted")
	}
}

func TestWatchdogJitterIsNotStarvation(t *testing.T) {
	r := newHBRun()
	for range 100 {
		r.tick(5 * time.Millisecond)
	}
	if len(r.w.stalls) != 0 {
		t.Fatalf("timer jitter recorded as %d stalls", len(r.w.stalls))
	}
	// Stalls older than keepStalls are forgotten.
	r.tick(time.Second)
	r.clk.advance(2 * keepStalls)
	r.tick(time.Second)
	if len(r.w.stalls) != 1 {
		t.Fatalf("%d stalls kept", len(r.w.stalls))
	}
}

func TestEchoState(t *testing.T) {
	clk := newFakeClock()
	var e echoState
	for i := range echoTrials {
		e.add(uint64(i+1), clk.now())
	}
	if e.echoFailed() {
		t.Fatal("echo given up too early")
	}
	e.add(99, clk.now())
	if !e.echoFailed() {
		t.Fatal("echo never answered and not given up")
	}
	sent := clk.now()
	e.add(100, sent)
	if at, ok := e.take(100); !ok || !at.Equal(sent) || e.echoFailed() {
		t.Fatalf("take: %v %v failed=%v", at, ok, e.echoFailed())
	}
	if _, ok := e.take(100); ok {
		t.Fatal("an echo taken twice")
	}
	if _, ok := e.take(12345); ok {
		t.Fatal("an unknown nonce taken")
	}
}

// TestGapRecordJitter: a member whose heartbeats came 350 ms apart in the last minute
// gets 250 ms more; a minute later it gets nothing; the bound is the caller's (maxExtra).
func TestGapRecordJitter(t *testing.T) {
	clk := newFakeClock()
	interval, _ := heartbeatTimings(time.Second)
	var g gapRecord
	for range 10 {
		clk.advance(interval)
		g.add(clk.now(), interval)
	}
	if j := g.jitter(clk.now(), interval); j != 0 {
		t.Fatalf("steady heartbeats: jitter %v", j)
	}
	clk.advance(350 * time.Millisecond)
	g.add(clk.now(), 350*time.Millisecond)
	clk.advance(interval)
	g.add(clk.now(), interval)
	if j := g.jitter(clk.now(), interval); j != 250*time.Millisecond {
		t.Fatalf("after a 350 ms gap: jitter %v", j)
	}
	clk.advance(keepGaps + time.Second)
	if j := g.jitter(clk.now(), interval); j != 0 {
		t.Fatalf("a minute later: jitter %v", j)
	}
	if maxExtra(time.Second) != 200*time.Millisecond {
		t.Fatal("maxExtra")
	}
}
