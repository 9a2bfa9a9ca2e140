package health

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/internal/testutil"
	"github.com/mxlb/mxlb/pool"
)

// waitFor bounds every wait on an event, so a broken test fails instead of hanging.
const waitFor = 10 * time.Second

// fakeClock hands out timers that fire when the test says so, or at once in auto mode,
// or at once when shorter than autoBelow.
type fakeClock struct {
	auto      bool
	autoBelow time.Duration
	timers    chan *fakeTimer // every timer made, in order

	mu  sync.Mutex
	now time.Time
}

func newFakeClock(auto bool) *fakeClock {
	return &fakeClock{auto: auto, timers: make(chan *fakeTimer, 1024), now: time.Unix(1_700_000_000, 0)}
}

type fakeTimer struct {
	clk *fakeClock
	d   time.Duration
	c   chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{clk: c, d: d, c: make(chan time.Time, 1)}
	if c.auto || d < c.autoBelow {
		t.fire()
	}
	select {
	case c.timers <- t:
	default: // auto mode: nobody needs to see them all
	}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool          { return true }

// fire moves the clock to the timer's deadline and fires it.
func (t *fakeTimer) fire() {
	t.clk.mu.Lock()
	t.clk.now = t.clk.now.Add(t.d)
	now := t.clk.now
	t.clk.mu.Unlock()
	select {
	case t.c <- now:
	default:
	}
}

// next waits for the next timer a worker makes.
func (c *fakeClock) next(t *testing.T) *fakeTimer {
	t.Helper()
	select {
	case tm := <-c.timers:
		return tm
	case <-time.After(waitFor):
		t.Fatal("no timer made")
		return nil
	}
}

// probeCall is one Check of a fakeProber's checker, waiting for the test's Result.
type probeCall struct {
	k     pool.Key
	ctx   context.Context
	reply chan Result
}

// fakeProber builds checkers whose every Check is handed to the test.
type fakeProber struct {
	calls chan probeCall

	mu    sync.Mutex
	built []ProbeConfig
}

func newFakeProber() *fakeProber { return &fakeProber{calls: make(chan probeCall)} }

func (f *fakeProber) NewChecker(k pool.Key, c ProbeConfig) Checker {
	f.mu.Lock()
	f.built = append(f.built, c)
	f.mu.Unlock()
	return checkerFunc(func(ctx context.Context) Result {
		call := probeCall{k: k, ctx: ctx, reply: make(chan Result, 1)}
		select {
		case f.calls <- call:
		case <-ctx.Done():
			return Result{Reason: "canceled"}
		}
		select {
		case r := <-call.reply:
			return r
		case <-ctx.Done():
			return Result{Reason: "canceled"}
		}
	})
}

func (f *fakeProber) builds() []ProbeConfig {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ProbeConfig(nil), f.built...)
}

// next waits for the next Check.
func (f *fakeProber) next(t *testing.T) probeCall {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-time.After(waitFor):
		t.Fatal("no probe")
		return probeCall{}
	}
}

// nextFor waits for a Check of each key in keys, answering others OK.
func (f *fakeProber) nextFor(t *testing.T, keys ...pool.Key) map[pool.Key]probeCall {
	t.Helper()
	out := map[pool.Key]probeCall{}
	for len(out) < len(keys) {
		c := f.next(t)
		if _, seen := out[c.k]; !seen && contains(keys, c.k) {
			out[c.k] = c
			continue
		}
		c.reply <- Result{OK: true}
	}
	return out
}

func contains(keys []pool.Key, k pool.Key) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

type checkerFunc func(ctx context.Context) Result

func (f checkerFunc) Check(ctx context.Context) Result { return f(ctx) }

// event is one Sink call.
type event struct {
	health bool // ObserveHealth, else ObserveAgent
	k      pool.Key
	up     bool
	reason string
	report pool.AgentReport
	err    error
}

// recSink records Sink calls and keeps counters per key.
type recSink struct {
	agents chan event // every ObserveAgent

	mu     sync.Mutex
	events []event
	stats  map[pool.Key]*pool.Stats
}

func newRecSink() *recSink {
	return &recSink{agents: make(chan event, 1024), stats: map[pool.Key]*pool.Stats{}}
}

func (s *recSink) ObserveHealth(k pool.Key, up bool, reason string, _ time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, event{health: true, k: k, up: up, reason: reason})
}

func (s *recSink) ObserveAgent(k pool.Key, r pool.AgentReport, err error, _ time.Time) {
	e := event{k: k, report: r, err: err}
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
	s.agents <- e
}

func (s *recSink) Stats(k pool.Key) *pool.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stats[k] == nil {
		s.stats[k] = &pool.Stats{}
	}
	return s.stats[k]
}

func (s *recSink) health() []event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []event
	for _, e := range s.events {
		if e.health {
			out = append(out, e)
		}
	}
	return out
}

func (s *recSink) nextAgent(t *testing.T) event {
	t.Helper()
	select {
	case e := <-s.agents:
		return e
	case <-time.After(waitFor):
		t.Fatal("no agent report")
		return event{}
	}
}

// run starts m.Run and stops it when the test ends, checking that it returned nil.
func run(t *testing.T, m *Manager) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(waitFor):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// mxPool is a pool named mx with the given backends, rise 2, fall 3, interval 1s.
func mxPool(backends ...config.Backend) config.Pool {
	return config.Pool{
		Name: "mx",
		Health: config.Health{
			Interval: config.Duration(time.Second), Timeout: config.Duration(time.Second),
			Rise: 2, Fall: 3, HELO: "lb.test",
		},
		Backends: backends,
	}
}

func backend(addr, state string) config.Backend { return config.Backend{Address: addr, State: state} }

func table(pools ...config.Pool) *pool.Table {
	t := pool.NewTable(nil)
	t.SetSpec(defaulted(pools...))
	return t
}

// defaulted is a spec of pools with config's defaults applied, as the node hands it over.
func defaulted(pools ...config.Pool) config.Spec {
	s := config.Spec{Pools: pools}
	s.ApplyDefaults()
	return s
}

var (
	keyA = pool.Key{Pool: "mx", Addr: "127.0.0.1:2501"}
	keyB = pool.Key{Pool: "mx", Addr: "127.0.0.1:2502"}
)

func TestDelays(t *testing.T) {
	for range 1000 {
		if d := firstDelay(10 * time.Second); d < 0 || d >= MaxFirstDelay {
			t.Fatalf("firstDelay(10s) = %v; want [0, %v)", d, MaxFirstDelay)
		}
		if d := firstDelay(100 * time.Millisecond); d < 0 || d >= 100*time.Millisecond {
			t.Fatalf("firstDelay(100ms) = %v; want [0, 100ms)", d)
		}
		if d := nextDelay(time.Second, true); d <= 0 || d > time.Second {
			t.Fatalf("nextDelay(1s, first) = %v; want (0, 1s]", d)
		}
		if d := nextDelay(time.Second, false); d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Fatalf("nextDelay(1s) = %v; want 1s ± 10%%", d)
		}
	}
}

func TestManagerStaggersFirstProbes(t *testing.T) {
	var backends []config.Backend
	for i := range 90 {
		backends = append(backends, backend(net.JoinHostPort("127.0.0.1", strconv.Itoa(3000+i)), ""))
	}
	p := mxPool(backends...)
	p.Health.Interval = config.Duration(10 * time.Second)
	clk := newFakeClock(false)
	m := New(Options{Sink: newRecSink(), Clock: clk, NewChecker: newFakeProber().NewChecker, Logger: discard()})
	m.Sync(table(p).View())
	run(t, m)
	seen := map[time.Duration]bool{}
	for range 90 {
		// Within 100 ms, whatever the interval: a starting node waits for these verdicts.
		d := clk.next(t).d
		if d < 0 || d >= 100*time.Millisecond {
			t.Fatalf("first delay %v; want [0, 100ms)", d)
		}
		seen[d] = true
	}
	if len(seen) < 45 {
		t.Errorf("only %d distinct first delays among 90 backends", len(seen))
	}
}

func TestManagerReportsTransitionsOnly(t *testing.T) {
	clk := newFakeClock(false)
	prober := newFakeProber()
	sink := newRecSink()
	logs := &testutil.LogBuffer{}
	m := New(Options{
		Sink: sink, Clock: clk, NewChecker: prober.NewChecker,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	m.Sync(table(mxPool(config.Backend{Address: keyA.Addr, Name: "mta1"})).View())
	run(t, m)

	refused := Result{Reason: "connect: connection refused", Latency: time.Millisecond}
	good := Result{OK: true, Latency: 3 * time.Millisecond}
	steps := []struct {
		res  Result
		want []event // health events after this step, in total
	}{
		{good, []event{{up: true}}}, // the first result decides at once
		{good, []event{{up: true}}},
		{refused, []event{{up: true}}},
		{refused, []event{{up: true}}},
		{refused, []event{{up: true}, {reason: refused.Reason}}}, // fall 3
		{refused, []event{{up: true}, {reason: refused.Reason}}},
		{good, []event{{up: true}, {reason: refused.Reason}}},
		{good, []event{{up: true}, {reason: refused.Reason}, {up: true}}}, // rise 2
	}
	var delays []time.Duration
	for i, st := range steps {
		tm := clk.next(t)
		delays = append(delays, tm.d)
		tm.fire()
		call := prober.next(t)
		call.reply <- st.res
		// The worker reports before it makes its next timer.
		clk.timers <- clk.next(t)
		got := sink.health()
		if len(got) != len(st.want) {
			t.Fatalf("step %d: health events %+v; want %d", i, got, len(st.want))
		}
		for j, e := range got {
			if e.k != keyA || e.up != st.want[j].up || e.reason != st.want[j].reason {
				t.Fatalf("step %d: event %d = %+v; want %+v", i, j, e, st.want[j])
			}
		}
	}
	if delays[0] >= MaxFirstDelay || delays[1] <= 0 || delays[1] > time.Second {
		t.Errorf("first delays %v", delays[:2])
	}
	for _, d := range delays[2:] {
		if d < 900*time.Millisecond || d > 1100*time.Millisecond {
			t.Errorf("later delay %v; want 1s ± 10%%", d)
		}
	}
	st := sink.Stats(keyA)
	if n := st.ProbeFails.Load(); n != 4 {
		t.Errorf("ProbeFails = %d; want 4", n)
	}
	if d := time.Duration(st.ProbeNanos.Load()); d != good.Latency {
		t.Errorf("ProbeNanos = %v; want %v", d, good.Latency)
	}

	var down, up map[string]any
	for _, line := range strings.Split(logs.String(), "\n") {
		var into *map[string]any
		switch {
		case strings.Contains(line, `"state":"down"`):
			into = &down
		case strings.Contains(line, `"state":"up"`):
			into = &up
		default:
			continue
		}
		if err := json.Unmarshal([]byte(line), into); err != nil {
			t.Fatal(err)
		}
	}
	// The name as well as the address: what an operator greps for (HAProxy: "Server
	// mx/mta1 is DOWN"); the log had the address only.
	want := map[string]string{
		"component": "health", "pool": "mx", "backend": keyA.Addr, "name": "mta1", "state": "down", "reason": refused.Reason, "level": "WARN",
	}
	for k, v := range want {
		if down[k] != v {
			t.Errorf("down log %v: %s = %v; want %q", down, k, down[k], v)
		}
	}
	if up["name"] != "mta1" {
		t.Errorf("up log %v: no name", up)
	}
	if _, ok := up["reason"]; ok {
		t.Errorf("up log %v: an empty reason", up)
	}
}

func TestManagerMaintAndRemovalStopProbes(t *testing.T) {
	for _, tt := range []struct {
		name string
		next config.Pool
	}{
		{"maint", mxPool(backend(keyA.Addr, "maint"), backend(keyB.Addr, ""))},
		{"removed", mxPool(backend(keyB.Addr, ""))},
	} {
		t.Run(tt.name, func(t *testing.T) {
			prober := newFakeProber()
			m := New(Options{Sink: newRecSink(), Clock: newFakeClock(true), NewChecker: prober.NewChecker, Logger: discard()})
			tab := table(mxPool(backend(keyA.Addr, ""), backend(keyB.Addr, "")))
			m.Sync(tab.View())
			run(t, m)
			calls := prober.nextFor(t, keyA, keyB)

			tab.SetSpec(defaulted(tt.next))
			m.Sync(tab.View())
			select {
			case <-calls[keyA].ctx.Done():
			case <-time.After(waitFor):
				t.Fatal("the probe of A was not stopped")
			}
			if calls[keyB].ctx.Err() != nil {
				t.Fatal("the probe of B was stopped")
			}
			if _, ok := m.workerKeys()[workerKey{keyA, kindSMTP}]; ok {
				t.Error("A still has a worker")
			}
			// B goes on, and A is probed no more.
			calls[keyB].reply <- Result{OK: true}
			for range 5 {
				c := prober.next(t)
				if c.k != keyB {
					t.Fatalf("probe of %v after it left", c.k)
				}
				c.reply <- Result{OK: true}
			}
		})
	}
}

func TestManagerDrainKeepsProbing(t *testing.T) {
	prober := newFakeProber()
	m := New(Options{Sink: newRecSink(), Clock: newFakeClock(true), NewChecker: prober.NewChecker, Logger: discard()})
	tab := table(mxPool(backend(keyA.Addr, "maint")))
	m.Sync(tab.View())
	run(t, m)
	if len(m.workerKeys()) != 0 {
		t.Fatalf("workers for a backend in maint: %v", m.workerKeys())
	}
	tab.SetSpec(defaulted(mxPool(backend(keyA.Addr, "drain"))))
	m.Sync(tab.View())
	c := prober.next(t)
	if c.k != keyA {
		t.Fatalf("probe of %v", c.k)
	}
	c.reply <- Result{OK: true}
}

func TestManagerConfigChange(t *testing.T) {
	prober := newFakeProber()
	sink := newRecSink()
	clk := newFakeClock(true)
	m := New(Options{Sink: sink, Clock: clk, NewChecker: prober.NewChecker, Logger: discard()})
	tab := table(mxPool(backend(keyA.Addr, "")))
	m.Sync(tab.View())
	run(t, m)
	first := prober.next(t)
	first.reply <- Result{OK: true}
	second := prober.next(t) // the up verdict is in the sink; pass it to the table
	tab.ObserveHealth(keyA, true, "", clk.Now())

	// A new view with the same probe configuration changes nothing.
	m.Sync(tab.View())
	if second.ctx.Err() != nil || len(prober.builds()) != 1 {
		t.Fatalf("an unchanged configuration restarted the worker (builds %d)", len(prober.builds()))
	}

	p := mxPool(backend(keyA.Addr, ""))
	p.Health.Interval = config.Duration(2 * time.Second)
	p.Health.RcptTo = "probe@mx.test"
	tab.SetSpec(defaulted(p))
	m.Sync(tab.View())
	select {
	case <-second.ctx.Done():
	case <-time.After(waitFor):
		t.Fatal("the old worker was not stopped")
	}
	builds := prober.builds()
	if len(builds) != 2 {
		t.Fatalf("builds %+v; want 2", builds)
	}
	want := ProbeConfig{
		Addr: keyA.Addr, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3,
		HELO: "lb.test", RcptTo: "probe@mx.test", Proxy: "none",
	}
	if builds[1] != want {
		t.Errorf("new config %+v; want %+v", builds[1], want)
	}
	// The restarted worker keeps the verdict: one failure is not fall 3.
	c := prober.next(t)
	c.reply <- Result{Reason: "connect: connection refused"}
	prober.next(t).reply <- Result{OK: true} // the failure has been handled
	if got := sink.health(); len(got) != 1 || !got[0].up {
		t.Errorf("health events %+v; want the first up only", got)
	}
}

func TestManagerHealthDisabled(t *testing.T) {
	p := mxPool(backend(keyA.Addr, ""))
	p.Health.Disabled = true
	p.Agent = &config.Agent{Port: 4949, Interval: config.Duration(3 * time.Second), Timeout: config.Duration(time.Second / 2)}
	clk := newFakeClock(false)
	m := New(Options{Sink: newRecSink(), Clock: clk, NewChecker: newFakeProber().NewChecker, Logger: discard()})
	m.Sync(table(p).View())
	run(t, m)
	clk.next(t) // the agent worker's first timer: it runs
	want := workerKey{keyA, kindAgent}
	got := m.workerKeys()
	if len(got) != 1 || got[want].agent != (agentConfig{"127.0.0.1:4949", 3 * time.Second, time.Second / 2}) {
		t.Errorf("workers %+v; want one agent worker for 127.0.0.1:4949", got)
	}
}

func TestManagerAgentReports(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "up 80% maxconn:50 queue=12 deferred=4 load1=0.42 disk=93\n")
			_ = c.Close()
		}
	})
	defer wg.Wait()
	defer l.Close()

	p := mxPool(config.Backend{Address: keyA.Addr, Agent: l.Addr().String()})
	p.Health.Disabled = true
	p.Agent = &config.Agent{Port: 4949, Interval: config.Duration(time.Second), QueueHigh: 100}
	clk := newFakeClock(false)
	sink := newRecSink()
	m := New(Options{Sink: sink, Clock: clk, Logger: discard()})
	m.Sync(table(p).View())
	run(t, m)

	clk.next(t).fire()
	e := sink.nextAgent(t)
	want := pool.AgentReport{State: "up", Percent: 80, MaxConn: 50, Queue: 12, Incoming: -1, Active: -1, Deferred: 4, Hold: -1,
		Load1: 0.42, Load5: -1, Load15: -1, CPU: -1, Mem: -1, Disk: 93, Inodes: -1} // the host's words, absent ones -1
	if e.k != keyA || e.err != nil || e.report != want {
		t.Errorf("agent event %+v; want %+v", e, want)
	}
	// The agent goes away: the failure is passed on for the pool to count.
	l.Close()
	wg.Wait()
	clk.next(t).fire()
	if e := sink.nextAgent(t); e.err == nil || !strings.Contains(e.err.Error(), "connection refused") {
		t.Errorf("agent event %+v; want a refused connection", e)
	}
}

// blockingDialer hands every dial to the test and never connects.
type blockingDialer struct{ dials chan dialCall }

type dialCall struct {
	addr string
	ctx  context.Context
}

func (d blockingDialer) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	select {
	case d.dials <- dialCall{addr, ctx}:
	case <-ctx.Done():
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestManagerAgentDrainAndMaint(t *testing.T) {
	dials := make(chan dialCall)
	prober := newFakeProber()
	m := New(Options{
		Sink: newRecSink(), Clock: newFakeClock(true), Logger: discard(),
		Dialer: blockingDialer{dials}, NewChecker: prober.NewChecker,
	})
	spec := func(state string) config.Pool {
		p := mxPool(backend(keyA.Addr, state))
		p.Agent = &config.Agent{Port: 4949, Timeout: config.Duration(time.Hour)}
		return p
	}
	tab := table(spec("drain"))
	m.Sync(tab.View())
	run(t, m)
	var dial dialCall
	select {
	case dial = <-dials:
	case <-time.After(waitFor):
		t.Fatal("no agent probe in drain")
	}
	if dial.addr != "127.0.0.1:4949" {
		t.Errorf("agent probe to %s", dial.addr)
	}
	smtp := prober.next(t) // and the SMTP probe goes on too

	tab.SetSpec(defaulted(spec("maint")))
	m.Sync(tab.View())
	for _, ctx := range []context.Context{dial.ctx, smtp.ctx} {
		select {
		case <-ctx.Done():
		case <-time.After(waitFor):
			t.Fatal("a probe went on in maint")
		}
	}
	if w := m.workerKeys(); len(w) != 0 {
		t.Errorf("workers in maint: %v", w)
	}
}

func TestManagerWithTable(t *testing.T) {
	prober := newFakeProber()
	tab := table(mxPool(backend(keyA.Addr, "")))
	m := New(Options{Sink: tab, Clock: newFakeClock(true), NewChecker: prober.NewChecker, Logger: discard()})
	m.Sync(tab.View())
	run(t, m)
	prober.next(t).reply <- Result{OK: true, Latency: 7 * time.Millisecond}
	c := prober.next(t)
	b := tab.View().Backend(keyA)
	if !b.Health.Up || !b.Health.Checked {
		t.Errorf("health %+v; want up after the first probe", b.Health)
	}
	if d := b.Stats.ProbeNanos.Load(); d != int64(7*time.Millisecond) {
		t.Errorf("ProbeNanos %d", d)
	}
	c.reply <- Result{OK: true}
}

func TestManagerRunStopsEverything(t *testing.T) {
	dials := make(chan dialCall, 16)
	prober := newFakeProber()
	p := mxPool(backend(keyA.Addr, ""), backend(keyB.Addr, "drain"))
	p.Agent = &config.Agent{Port: 4949}
	m := New(Options{
		Sink: newRecSink(), Clock: newFakeClock(true), Logger: discard(),
		Dialer: blockingDialer{dials}, NewChecker: prober.NewChecker,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	m.Sync(table(p).View()) // during Run or before: either way the workers start
	prober.nextFor(t, keyA, keyB)
	for range 2 {
		<-dials
	}
	if err := m.Run(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run = %v; want already running", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if w := m.workerKeys(); len(w) != 0 {
		t.Errorf("workers after Run: %v", w)
	}
	goleak.VerifyNone(t)
}

func TestManagerNeedsSink(t *testing.T) {
	if err := New(Options{}).Run(context.Background()); err == nil {
		t.Error("Run without a Sink succeeded")
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestManagerPassive: a passive failure takes an up backend down at once; rise good probes
// bring it back.
func TestManagerPassive(t *testing.T) {
	clk := newFakeClock(false)
	prober := newFakeProber()
	sink := newRecSink()
	m := New(Options{Sink: sink, Clock: clk, NewChecker: prober.NewChecker})
	m.Sync(table(mxPool(backend(keyA.Addr, ""))).View())
	run(t, m)
	good := Result{OK: true}
	probe := func(r Result) {
		t.Helper()
		clk.next(t).fire()
		prober.next(t).reply <- r
	}
	probe(good)       // first result: up
	tm := clk.next(t) // the worker waits for its next probe
	m.Passive(keyA, "3 tempfails in a row")
	waitUntil(t, func() bool { return len(sink.health()) == 2 })
	if e := sink.health()[1]; e.up || e.reason != "passive: 3 tempfails in a row" {
		t.Fatalf("passive event %+v", e)
	}
	tm.fire() // the old timer is stopped: firing it changes nothing
	probe(good)
	if n := len(sink.health()); n != 2 {
		t.Fatalf("up after one good probe with rise 2: %+v", sink.health())
	}
	probe(good)
	waitUntil(t, func() bool { return len(sink.health()) == 3 })
	if e := sink.health()[2]; !e.up {
		t.Fatalf("not back up after rise probes: %+v", sink.health())
	}
	m.Passive(pool.Key{Pool: "mx", Addr: "198.18.9.9:25"}, "unknown backend: ignored")
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met")
		}
		time.Sleep(time.Millisecond)
	}
}
