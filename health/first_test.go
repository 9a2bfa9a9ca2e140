package health

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/pool"
)

// firstProbeClock fires the workers' first probes at once; the bound of FirstVerdicts and
// (mostly) later probes wait for the test.
func firstProbeClock() *fakeClock {
	c := newFakeClock(false)
	c.autoBelow = MaxFirstDelay
	return c
}

// firstVerdicts runs m.FirstVerdicts(ctx) and hands its answer over.
func firstVerdicts(ctx context.Context, m *Manager) <-chan error {
	done := make(chan error, 1)
	go func() { done <- m.FirstVerdicts(ctx) }()
	return done
}

// answer waits for FirstVerdicts' answer.
func answer(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(waitFor):
		t.Fatal("FirstVerdicts did not return")
		return nil
	}
}

// hasVerdict reports whether k's SMTP worker has given its first verdict.
func hasVerdict(m *Manager, k pool.Key) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.workers[workerKey{k, kindSMTP}]
	return w != nil && w.verdict
}

// boundTimer waits for the timer FirstVerdicts makes for its bound d; it has taken its
// snapshot of the backends by then. Other timers (the workers') are left alone.
func boundTimer(t *testing.T, clk *fakeClock, d time.Duration) *fakeTimer {
	t.Helper()
	for {
		if tm := clk.next(t); tm.d == d {
			return tm
		}
	}
}

// TestFirstVerdictsRealProbes: after a (re)start with rise 2, one probe each decides: the
// healthy MTA is up and the one that 421s its banner is down, with no rise/fall wait, and
// FirstVerdicts returns once both are in the table. The pools' helo is empty, so the probe
// says the node's own name.
func TestFirstVerdictsRealProbes(t *testing.T) {
	good := fakeMTA{banner: "220 good.test ESMTP\r\n"}
	good.start(t)
	shutting := fakeMTA{banner: "421 4.3.2 Service shutting down\r\n", closeBanner: true}
	shutting.start(t)
	p := config.Pool{Name: "mx", Backends: []config.Backend{{Address: good.addr}, {Address: shutting.addr}}}
	tab := table(p) // defaults: rise 2, fall 3, timeout 5s, helo empty
	if h := tab.View().Pool("mx").Spec.Health; h.Rise != 2 || h.HELO != "" {
		t.Fatalf("defaulted health %+v; want rise 2 and no helo", h)
	}
	clk := firstProbeClock()
	m := New(Options{Sink: tab, Clock: clk, Logger: discard(), DefaultHELO: "lb7.mx.test"})
	m.Sync(tab.View())
	run(t, m)

	if err := answer(t, firstVerdicts(context.Background(), m)); err != nil {
		t.Fatalf("FirstVerdicts = %v", err)
	}
	v := tab.View()
	if h := v.Backend(pool.Key{Pool: "mx", Addr: good.addr}).Health; !h.Checked || !h.Up {
		t.Errorf("good MTA: %+v; want up after its first probe", h)
	}
	h := v.Backend(pool.Key{Pool: "mx", Addr: shutting.addr}).Health
	if !h.Checked || h.Up || !strings.Contains(h.Reason, "421 4.3.2") {
		t.Errorf("421 MTA: %+v; want down after its first probe", h)
	}
	if ok, _ := v.Backend(pool.Key{Pool: "mx", Addr: good.addr}).Usable(); !ok {
		t.Error("the good MTA is not usable after FirstVerdicts")
	}
	if s := good.session(t); len(s.cmds) == 0 || s.cmds[0] != "EHLO lb7.mx.test" {
		t.Errorf("good MTA saw %q; want EHLO lb7.mx.test", s.cmds)
	}
}

// TestFirstVerdictsWaitsForEveryBackend: FirstVerdicts returns only once the last backend
// of the synced view has its first verdict, and the Sink has it by then.
func TestFirstVerdictsWaitsForEveryBackend(t *testing.T) {
	prober := newFakeProber()
	sink := newRecSink()
	clk := firstProbeClock()
	m := New(Options{Sink: sink, Clock: clk, NewChecker: prober.NewChecker, Logger: discard()})
	m.Sync(table(mxPool(backend(keyA.Addr, ""), backend(keyB.Addr, ""))).View())
	run(t, m)
	done := firstVerdicts(context.Background(), m)

	calls := map[pool.Key]probeCall{}
	for len(calls) < 2 {
		c := prober.next(t)
		calls[c.k] = c
	}
	calls[keyA].reply <- Result{OK: true}
	waitUntil(t, func() bool { return len(sink.health()) == 1 })
	select {
	case err := <-done:
		t.Fatalf("FirstVerdicts = %v before B had a verdict", err)
	default:
	}
	calls[keyB].reply <- Result{Reason: "connect: connection refused"}
	if err := answer(t, done); err != nil {
		t.Fatalf("FirstVerdicts = %v", err)
	}
	got := sink.health()
	if len(got) != 2 || got[0].k != keyA || !got[0].up || got[1].k != keyB || got[1].up {
		t.Errorf("health events %+v; want A up, then B down", got)
	}
	// Asked again, it has nothing to wait for.
	if err := answer(t, firstVerdicts(context.Background(), m)); err != nil {
		t.Errorf("FirstVerdicts again = %v", err)
	}
}

// TestFirstVerdictsFollowsTheView: a backend removed while FirstVerdicts waits no longer
// holds it up, and a backend added after the call does not either.
func TestFirstVerdictsFollowsTheView(t *testing.T) {
	prober := newFakeProber()
	sink := newRecSink()
	clk := firstProbeClock()
	m := New(Options{Sink: sink, Clock: clk, NewChecker: prober.NewChecker, Logger: discard()})
	keyC := pool.Key{Pool: "mx", Addr: "127.0.0.1:2503"}
	tab := table(mxPool(backend(keyA.Addr, ""), backend(keyB.Addr, "")))
	m.Sync(tab.View())
	run(t, m)
	done := firstVerdicts(context.Background(), m)
	boundTimer(t, clk, time.Second+MaxFirstDelay) // the snapshot is taken: A and B

	// B leaves, C arrives; A answers.
	tab.SetSpec(defaulted(mxPool(backend(keyA.Addr, ""), backend(keyC.Addr, ""))))
	m.Sync(tab.View())
	calls := prober.nextFor(t, keyA, keyC)
	calls[keyA].reply <- Result{OK: true}
	if err := answer(t, done); err != nil {
		t.Fatalf("FirstVerdicts = %v; want nil with C still unprobed", err)
	}
	if got := sink.health(); len(got) != 1 || got[0].k != keyA {
		t.Errorf("health events %+v; want A's only", got)
	}
}

// TestFirstVerdictsBound: with a backend that never answers, FirstVerdicts gives up after
// one probe timeout (plus the first-probe spread) and names it; a cancelled ctx ends the
// wait too.
func TestFirstVerdictsBound(t *testing.T) {
	prober := newFakeProber()
	clk := firstProbeClock()
	m := New(Options{Sink: newRecSink(), Clock: clk, NewChecker: prober.NewChecker, Logger: discard()})
	slow := mxPool(backend(keyB.Addr, ""))
	slow.Name = "slow"
	slow.Health.Timeout = config.Duration(3 * time.Second)
	m.Sync(table(mxPool(backend(keyA.Addr, "")), slow).View())
	run(t, m)

	done := firstVerdicts(context.Background(), m)
	bound := 3*time.Second + MaxFirstDelay // the largest timeout of the pools
	tm := boundTimer(t, clk, bound)
	calls := map[pool.Key]probeCall{}
	for len(calls) < 2 {
		c := prober.next(t)
		calls[c.k] = c
	}
	calls[keyA].reply <- Result{OK: true} // A answers; B's probe hangs
	waitUntil(t, func() bool { return hasVerdict(m, keyA) })
	tm.fire()
	err := answer(t, done)
	var nv *NoVerdictError
	if !errors.As(err, &nv) || len(nv.Backends) != 1 || nv.Backends[0] != (pool.Key{Pool: "slow", Addr: keyB.Addr}) || nv.After != bound || nv.Of != 2 {
		t.Fatalf("FirstVerdicts = %#v; want B named after %v", err, bound)
	}
	want := "health: 1 of 2 backends without a first verdict after 3.1s (down until probed): slow/127.0.0.1:2502"
	if err.Error() != want {
		t.Errorf("error %q; want %q", err, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done = firstVerdicts(ctx, m)
	boundTimer(t, clk, bound)
	cancel()
	if err := answer(t, done); !errors.Is(err, context.Canceled) {
		t.Errorf("FirstVerdicts after cancel = %v", err)
	}
}

// TestFirstVerdictsNothingToWaitFor: backends without an SMTP probe (health disabled, maint)
// and a Manager with nothing synced return at once, Run or not.
func TestFirstVerdictsNothingToWaitFor(t *testing.T) {
	m := New(Options{Sink: newRecSink(), Clock: newFakeClock(false), NewChecker: newFakeProber().NewChecker, Logger: discard()})
	if err := m.FirstVerdicts(context.Background()); err != nil {
		t.Errorf("nothing synced: %v", err)
	}
	off := mxPool(backend(keyA.Addr, ""))
	off.Health.Disabled = true
	other := mxPool(backend(keyB.Addr, "maint"))
	other.Name = "other"
	m.Sync(table(off, other).View())
	if err := m.FirstVerdicts(context.Background()); err != nil {
		t.Errorf("no probed backend: %v", err)
	}
}

// TestFirstVerdictsPassiveAndCarried: a passive failure before the first probe is a first
// verdict (down), and a worker restarted for a new configuration keeps the verdict it had.
func TestFirstVerdictsPassiveAndCarried(t *testing.T) {
	prober := newFakeProber()
	clk := newFakeClock(false)
	tab := table(mxPool(backend(keyA.Addr, "")))
	m := New(Options{Sink: tab, Clock: clk, NewChecker: prober.NewChecker, Logger: discard()})
	m.Sync(tab.View())
	run(t, m)
	done := firstVerdicts(context.Background(), m)
	// Two timers: the bound, and the worker's first probe, which stays unfired.
	for _, tm := range []*fakeTimer{clk.next(t), clk.next(t)} {
		if tm.d >= MaxFirstDelay && tm.d != time.Second+MaxFirstDelay {
			t.Fatalf("timer of %v", tm.d)
		}
	}
	m.Passive(keyA, "3 failed connects in a row")
	if err := answer(t, done); err != nil {
		t.Fatalf("FirstVerdicts = %v", err)
	}
	if h := tab.View().Backend(keyA).Health; !h.Checked || h.Up {
		t.Fatalf("health %+v; want down", h)
	}

	p := mxPool(backend(keyA.Addr, ""))
	p.Health.Interval = config.Duration(2 * time.Second)
	tab.SetSpec(defaulted(p))
	m.Sync(tab.View()) // restarts the worker, which starts from the table's verdict
	if err := m.FirstVerdicts(context.Background()); err != nil {
		t.Errorf("FirstVerdicts after a restart = %v", err)
	}
}

// TestManagerSkipsUndefaultedPools: a spec whose defaults were not applied is not probed
// (rather than probed in a tight loop), and the Manager says so once.
func TestManagerSkipsUndefaultedPools(t *testing.T) {
	logs := &testutil.LogBuffer{}
	prober := newFakeProber()
	m := New(Options{Sink: newRecSink(), Clock: newFakeClock(true), NewChecker: prober.NewChecker,
		Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	tab := pool.NewTable(nil)
	raw := config.Pool{Name: "raw", Backends: []config.Backend{{Address: keyA.Addr}},
		Agent: &config.Agent{Port: 4949}}
	tab.SetSpec(config.Spec{Pools: []config.Pool{raw, mxPool(backend(keyB.Addr, ""))}})
	m.Sync(tab.View())
	tab.SetSpec(config.Spec{Pools: []config.Pool{raw, mxPool(backend(keyB.Addr, "drain"))}})
	m.Sync(tab.View())
	run(t, m)
	prober.next(t).reply <- Result{OK: true}
	w := m.workerKeys()
	if len(w) != 1 {
		t.Errorf("workers %v; want B's SMTP probe only", w)
	}
	if _, ok := w[workerKey{keyB, kindSMTP}]; !ok {
		t.Errorf("workers %v; want B's SMTP probe", w)
	}
	if n := strings.Count(logs.String(), `"msg":"pool not probed`); n != 2 {
		t.Errorf("%d log lines about the raw pool; want 2 (health and agent, once each):\n%s", n, logs)
	}
}

// TestFirstVerdictsWaitsOutAGreeting: a backend whose first probe has its banner held
// (postscreen's "220-" and greet wait, longer than the probe timeout) keeps the gate shut
// past the usual bound, once, by the hold: the node of a new farm behind postscreen
// opened with no backend up and answered clients 421 until the probes ended. A backend
// that holds the banner past that too is named as before.
func TestFirstVerdictsWaitsOutAGreeting(t *testing.T) {
	for _, answers := range []bool{true, false} {
		prober := newFakeProber()
		clk := firstProbeClock()
		tab := table(mxPool(backend(keyA.Addr, "")))
		m := New(Options{Sink: tab, Clock: clk, NewChecker: prober.NewChecker, Logger: discard()})
		m.Sync(tab.View())
		stop := run(t, m)

		done := firstVerdicts(context.Background(), m)
		bound := time.Second + MaxFirstDelay
		tm := boundTimer(t, clk, bound)
		call := prober.next(t)
		greetWait(call.ctx, 6*time.Second) // what SMTPProbe says on "220-"
		tm.fire()
		ext := boundTimer(t, clk, 6*time.Second)
		select {
		case err := <-done:
			t.Fatalf("FirstVerdicts = %v at the usual bound, with the banner held", err)
		default:
		}
		if answers {
			call.reply <- Result{OK: true}
			if err := answer(t, done); err != nil {
				t.Fatalf("FirstVerdicts = %v", err)
			}
			if h := tab.View().Backend(keyA).Health; !h.Checked || !h.Up {
				t.Fatalf("health %+v; want up", h)
			}
		} else {
			ext.fire()
			var nv *NoVerdictError
			if err := answer(t, done); !errors.As(err, &nv) || nv.After != bound+6*time.Second || len(nv.Backends) != 1 {
				t.Fatalf("FirstVerdicts = %v; want A named after %v", err, bound+6*time.Second)
			}
		}
		stop()
	}
}
