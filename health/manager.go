package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mxlb/mxlb/agent"
	"github.com/mxlb/mxlb/pool"
)

// Sink receives what the Manager learns; *pool.Table satisfies it. It is the only way
// health results leave this package.
//
// Threading contract: the Manager calls every method from its worker goroutines, several
// at once. Implementations must be safe for concurrent use, should return quickly, and must
// not call back into the Manager (the owner of the view calls Sync; a Sink that waited for
// Sync would deadlock it).
type Sink interface {
	// ObserveHealth is called on every SMTP verdict transition only (after rise/fall), and
	// for the first verdict of a backend's worker. reason is "" when up.
	ObserveHealth(k pool.Key, up bool, reason string, at time.Time)
	// ObserveAgent is called on every agent answer (err nil) and every failed agent probe;
	// the pool smooths answers and counts misses.
	ObserveAgent(k pool.Key, r pool.AgentReport, err error, at time.Time)
	// Stats returns the counters of k, or nil when k is gone. The Manager stores the latency
	// of each successful probe in ProbeNanos and counts failed probes in ProbeFails.
	Stats(k pool.Key) *pool.Stats
}

var _ Sink = (*pool.Table)(nil)

// MaxFirstDelay caps the delay before a worker's first probe. The first probe of each
// backend is spread uniformly over [0, min(interval, MaxFirstDelay)), so that 90 backends
// are not probed in the same millisecond (90 over 100 ms is one every ~1 ms) while a
// starting node, which accepts no client before every backend has its first verdict
// (FirstVerdicts), waits for its probes a tenth of a second rather than a whole interval.
// The second probe then lands uniformly in (0, interval] after the first, which spreads
// the steady-state probes over the whole interval without ever leaving a gap longer than
// one interval; from then on every interval is jittered by ±Jitter so that phases do not
// lock together again.
const MaxFirstDelay = 100 * time.Millisecond

// Jitter is the ± share of the interval by which every later probe is moved at random.
const Jitter = 0.1

// ProbeConfig is what one backend's SMTP probe is built from. It is comparable: Sync
// restarts a backend's worker exactly when its ProbeConfig changes.
type ProbeConfig struct {
	Addr     string
	Interval time.Duration
	Timeout  time.Duration
	Rise     int
	Fall     int
	HELO     string
	StartTLS bool
	MailFrom string
	RcptTo   string
	Proxy    string // none | v1 | v2
}

// Options configure a Manager. Only Sink is required.
type Options struct {
	Sink   Sink
	Clock  Clock        // nil means SystemClock
	Logger *slog.Logger // nil means slog.Default()
	// DefaultHELO is the HELO name of pools whose health.helo is empty: the node's own
	// name. The spec is shared by every node, so it never holds a node's name; each node
	// resolves the empty helo here, when it probes.
	DefaultHELO string
	// Dialer opens SMTP and agent probe connections; nil means a plain net.Dialer.
	Dialer Dialer
	// NewChecker builds a backend's SMTP checker; nil builds an *SMTPProbe from c. A test
	// seam: it is called with the Manager's lock held, so it must not call the Manager.
	NewChecker func(k pool.Key, c ProbeConfig) Checker
}

// Manager schedules the SMTP and agent probes of every backend in the pool view and sends
// their results to the Sink: one worker goroutine per backend and kind of probe, probing
// every interval. Backends in maint are not probed at all; in drain both probes go on.
// Pools with health.disabled get no SMTP probe; pools with an agent get an agent probe per
// backend that has an agent address.
//
// The view's spec must have its defaults applied (config's Spec.ApplyDefaults) and be
// valid: the Manager takes intervals, timeouts, rise and fall as they are and never
// defaults them again. A pool whose interval or timeout is not positive is not probed (and
// is logged), rather than probed in a tight loop. Only an empty health.helo is resolved
// here, to Options.DefaultHELO, because its value differs from node to node.
//
// Sync and Run may be called from any goroutine. Workers run only while Run runs.
type Manager struct {
	sink       Sink
	clock      Clock
	log        *slog.Logger
	helo       string
	dialer     Dialer
	newChecker func(k pool.Key, c ProbeConfig) Checker

	mu      sync.Mutex // guards the fields below
	view    *pool.View
	desired map[workerKey]want
	workers map[workerKey]*worker
	ctx     context.Context // Run's context while Run runs, else nil
	running bool
	wg      sync.WaitGroup  // running workers; Run waits for them
	wake    chan struct{}   // closed and replaced when a first verdict arrives or the workers change
	skipped map[string]bool // pools not probed for a bad interval or timeout, logged once
}

type kind uint8

const (
	kindSMTP kind = iota
	kindAgent
)

func (k kind) String() string {
	if k == kindAgent {
		return "agent"
	}
	return "smtp"
}

type workerKey struct {
	pool.Key
	kind kind
}

// agentConfig is what one backend's agent probe is built from.
type agentConfig struct {
	Addr     string
	Interval time.Duration
	Timeout  time.Duration
}

// want is one worker the view asks for.
type want struct {
	smtp   ProbeConfig // kindSMTP
	agent  agentConfig // kindAgent
	health pool.Health // the view's verdict, to seed a restarted SMTP worker
}

func (w want) same(o want) bool { return w.smtp == o.smtp && w.agent == o.agent }

type worker struct {
	want    want
	cancel  context.CancelFunc
	passive chan string // cap 1: a passive failure to apply (SMTP workers)
	verdict bool        // the Sink has a verdict from this worker (or it started with one); under Manager.mu
	// greet is how much longer than its timeout the first probe may take because the
	// backend answered and holds its banner's end (greetWait); under Manager.mu.
	greet time.Duration
}

// New returns a Manager that starts nothing until Run.
func New(o Options) *Manager {
	m := &Manager{
		sink: o.Sink, clock: o.Clock, log: o.Logger, helo: o.DefaultHELO, dialer: o.Dialer,
		newChecker: o.NewChecker,
		desired:    map[workerKey]want{},
		workers:    map[workerKey]*worker{},
		wake:       make(chan struct{}),
		skipped:    map[string]bool{},
	}
	if m.clock == nil {
		m.clock = SystemClock{}
	}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.log = m.log.With("component", "health")
	if m.newChecker == nil {
		m.newChecker = m.smtpProbe
	}
	return m
}

func (m *Manager) smtpProbe(_ pool.Key, c ProbeConfig) Checker {
	return &SMTPProbe{
		Addr: c.Addr, HELO: c.HELO, Timeout: c.Timeout, StartTLS: c.StartTLS,
		MailFrom: c.MailFrom, RcptTo: c.RcptTo, Proxy: c.Proxy, Dialer: m.dialer,
	}
}

// Sync makes the workers match view v: it starts workers for new backends, stops those of
// removed backends and of backends put in maint, and restarts a worker whose probe
// configuration changed (carrying its current verdict over, so rise/fall still applies).
// The same view again is a no-op, and an unchanged configuration costs one pass over the
// backends. Sync never waits for a worker: a stopped worker drops the result of a probe it
// had in flight. Called before Run, it records the view for Run to start.
func (m *Manager) Sync(v *pool.View) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v == m.view {
		return
	}
	m.view = v
	m.desired = m.wants(v)
	if m.ctx != nil {
		m.reconcile()
	}
	m.broadcast() // a backend that left no longer holds up FirstVerdicts
}

// wants lists the workers view v asks for. m.mu is held.
func (m *Manager) wants(v *pool.View) map[workerKey]want {
	out := map[workerKey]want{}
	if v == nil {
		return out
	}
	skipped := map[string]bool{}
	for _, name := range v.Order {
		p := v.Pools[name]
		if p == nil {
			continue
		}
		h, a := p.Spec.Health, p.Spec.Agent
		smtp := !h.Disabled && m.probeable(skipped, name, "health", h.Interval.D(), h.Timeout.D())
		agent := a != nil && m.probeable(skipped, name, "agent", a.Interval.D(), a.Timeout.D())
		for _, b := range p.Backends {
			if b.Admin == pool.Maint {
				continue // maint: out of rotation and not probed
			}
			if smtp {
				c := ProbeConfig{
					Addr: b.Addr, Interval: h.Interval.D(), Timeout: h.Timeout.D(),
					Rise: h.Rise, Fall: h.Fall, HELO: h.HELO, StartTLS: h.StartTLS,
					MailFrom: h.MailFrom, RcptTo: h.RcptTo, Proxy: b.Identity,
				}
				if c.HELO == "" {
					c.HELO = m.helo // per node, so not in the shared spec
				}
				out[workerKey{b.Key, kindSMTP}] = want{smtp: c, health: b.Health}
			}
			if agent && b.AgentAddr != "" {
				c := agentConfig{Addr: b.AgentAddr, Interval: a.Interval.D(), Timeout: a.Timeout.D()}
				out[workerKey{b.Key, kindAgent}] = want{agent: c}
			}
		}
	}
	m.skipped = skipped
	return out
}

// probeable reports whether a pool's probe of the given kind has a positive interval and
// timeout, logging a pool it newly finds without; skipped collects the pools found so.
// A spec that went through config has both; zeros here mean a spec built in code that
// skipped the defaults, and probing it would spin.
func (m *Manager) probeable(skipped map[string]bool, pool, what string, interval, timeout time.Duration) bool {
	if interval > 0 && timeout > 0 {
		return true
	}
	key := pool + "/" + what
	skipped[key] = true
	if !m.skipped[key] {
		m.log.Error("pool not probed: its interval and timeout must be positive (the spec's defaults were not applied)",
			"pool", pool, "check", what, "interval", interval, "timeout", timeout)
	}
	return false
}

// reconcile stops workers that are no longer wanted or wanted differently, and starts the
// missing ones. m.mu is held and Run is running.
func (m *Manager) reconcile() {
	restarted := map[workerKey]bool{}
	for wk, w := range m.workers {
		d, ok := m.desired[wk]
		if ok && d.same(w.want) {
			continue
		}
		w.cancel()
		delete(m.workers, wk)
		restarted[wk] = ok
	}
	for wk, d := range m.desired {
		if m.workers[wk] != nil {
			continue
		}
		var st State
		if restarted[wk] {
			// A new configuration is not news about the backend: keep its verdict.
			st = State{Up: d.health.Up, Checked: d.health.Checked}
		}
		m.start(wk, d, st)
	}
}

// start runs a worker for wk. m.mu is held and Run is running.
func (m *Manager) start(wk workerKey, d want, st State) {
	ctx, cancel := context.WithCancel(m.ctx)
	w := &worker{want: d, cancel: cancel, passive: make(chan string, 1), verdict: st.Checked}
	m.workers[wk] = w
	m.wg.Add(1)
	switch wk.kind {
	case kindSMTP:
		chk := m.newChecker(wk.Key, d.smtp)
		go func() {
			defer m.wg.Done()
			defer cancel()
			m.runSMTP(ctx, w, wk.Key, d.smtp, chk, st)
		}()
	case kindAgent:
		go func() {
			defer m.wg.Done()
			defer cancel()
			m.runAgent(ctx, wk.Key, d.agent)
		}()
	}
}

// Run starts the workers of the last synced view, keeps them in step with later Syncs, and
// returns nil once ctx is done and every worker has stopped. No goroutine of the Manager
// outlives Run. Run may be called again after it returned, but not twice at once.
func (m *Manager) Run(ctx context.Context) error {
	if m.sink == nil {
		return errors.New("health: Options.Sink is nil")
	}
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("health: Run is already running")
	}
	m.running, m.ctx = true, ctx
	m.reconcile()
	m.broadcast()
	m.mu.Unlock()

	<-ctx.Done()

	m.mu.Lock()
	m.ctx = nil // later Syncs only record the view
	for wk, w := range m.workers {
		w.cancel()
		delete(m.workers, wk)
	}
	m.mu.Unlock()
	m.wg.Wait()
	m.mu.Lock()
	m.running = false
	m.mu.Unlock()
	return nil
}

// Passive reports that traffic just found backend k failing (an L7 session's tempfails,
// a refused connect): the backend goes down at once, as if it had failed `fall` probes,
// and its probes must then succeed `rise` times to bring it back. Going through the
// prober, rather than straight to the pool, keeps one owner of the up/down verdict. Never
// blocks; a backend without an SMTP probe (health disabled, maint) is left alone.
func (m *Manager) Passive(k pool.Key, reason string) {
	m.mu.Lock()
	w := m.workers[workerKey{k, kindSMTP}]
	m.mu.Unlock()
	if w == nil {
		return
	}
	select {
	case w.passive <- reason:
	default: // one is pending already
	}
}

// runSMTP probes one backend every interval and reports verdict transitions; w is its
// worker, st the verdict it starts from.
func (m *Manager) runSMTP(ctx context.Context, w *worker, k pool.Key, c ProbeConfig, chk Checker, st State) {
	delay := firstDelay(c.Interval)
	for n := 0; ; n++ {
		t := m.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case why := <-w.passive:
			t.Stop()
			if st.Up || !st.Checked {
				m.report(k, false, "passive: "+why)
			}
			if !st.Checked {
				m.firstVerdict(w)
			}
			st = State{Up: false, Checked: true}
			delay = c.Interval // then probe again after an interval: rise successes bring it back
			continue
		case <-t.C():
		}
		pctx := ctx
		if !st.Checked {
			pctx = withGreetHook(ctx, func(extra time.Duration) {
				m.mu.Lock()
				w.greet = max(w.greet, extra)
				m.mu.Unlock()
			})
		}
		res := chk.Check(pctx)
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing about the backend
		}
		if s := m.sink.Stats(k); s != nil {
			if res.OK {
				s.ProbeNanos.Store(int64(res.Latency))
			} else {
				s.ProbeFails.Add(1)
			}
		}
		if !res.OK {
			m.log.Debug("probe failed", "pool", k.Pool, "backend", k.Addr, "check", "smtp", "reason", res.Reason)
		}
		first := !st.Checked
		var changed bool
		if st, changed = Step(st, res.OK, c.Rise, c.Fall); changed {
			m.report(k, st.Up, res.Reason)
		}
		if first {
			m.firstVerdict(w) // after the report: the Sink has it when FirstVerdicts returns
		}
		delay = nextDelay(c.Interval, n == 0)
	}
}

// firstVerdict records that w's backend has a verdict in the Sink and wakes FirstVerdicts.
func (m *Manager) firstVerdict(w *worker) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w.verdict = true
	m.broadcast()
}

// broadcast wakes every FirstVerdicts waiting now. m.mu is held.
func (m *Manager) broadcast() {
	close(m.wake)
	m.wake = make(chan struct{})
}

// FirstVerdicts waits until every backend that the last Sync asked to probe with SMTP has
// its first verdict in the Sink, and returns nil; at once when none is waiting. A node
// calls it at start, after the first Sync and with Run running, between opening its
// listeners (the kernel's backlog holds the first clients) and accepting: so that no
// client is refused, or handed a backend nobody has checked, for want of a first probe.
//
// Backends that leave the view meanwhile (removed, put in maint, health disabled) stop
// counting; backends added by later Syncs are not waited for. Backends in pools with
// health.disabled or in maint have no probe and are not waited for.
//
// The wait is bounded by one probe: the largest health.timeout of the awaited pools plus
// MaxFirstDelay, on the Manager's clock. When that passes with a backend whose probe has
// connected and is held in its banner (postscreen's "220-" and greet wait: the MTA is there
// and its probe ends within its own longer deadline), the wait goes on once by the longest
// such hold, so that a new farm behind postscreen does not open to clients with no backend
// up and answer them 421 for the second until its probes end. Past the bound, FirstVerdicts
// returns an error naming the backends still without a verdict (they stay down until their
// probe answers); the caller should log it and start accepting anyway. It returns ctx's
// error if ctx ends first. Safe to call from any goroutine, any number of times.
func (m *Manager) FirstVerdicts(ctx context.Context) error {
	m.mu.Lock()
	var awaited []workerKey
	var bound time.Duration
	for wk, d := range m.desired {
		if wk.kind == kindSMTP {
			awaited = append(awaited, wk)
			bound = max(bound, d.smtp.Timeout)
		}
	}
	m.mu.Unlock()
	if len(awaited) == 0 {
		return nil
	}
	bound += MaxFirstDelay
	t := m.clock.NewTimer(bound)
	defer func() { t.Stop() }()
	extended := false
	for {
		m.mu.Lock()
		pending := m.pending(awaited)
		wake := m.wake
		m.mu.Unlock()
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("health: waiting for first verdicts: %w", ctx.Err())
		case <-t.C():
			m.mu.Lock()
			pending = m.pending(awaited)
			var greet time.Duration
			for _, k := range pending {
				if w := m.workers[workerKey{k, kindSMTP}]; w != nil {
					greet = max(greet, w.greet)
				}
			}
			m.mu.Unlock()
			if len(pending) == 0 {
				return nil
			}
			if greet > 0 && !extended {
				extended, bound = true, bound+greet
				t = m.clock.NewTimer(greet)
				continue
			}
			return &NoVerdictError{After: bound, Backends: pending, Of: len(awaited)}
		}
	}
}

// pending lists the backends of awaited still in the view and without a verdict, sorted.
// m.mu is held.
func (m *Manager) pending(awaited []workerKey) []pool.Key {
	var out []pool.Key
	for _, wk := range awaited {
		if _, ok := m.desired[wk]; !ok {
			continue // left the view
		}
		if w := m.workers[wk]; w == nil || !w.verdict {
			out = append(out, wk.Key)
		}
	}
	slices.SortFunc(out, func(a, b pool.Key) int {
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Addr, b.Addr))
	})
	return out
}

// NoVerdictError is FirstVerdicts' answer when its bound passed first.
type NoVerdictError struct {
	After    time.Duration // the bound
	Backends []pool.Key    // those without a verdict, sorted
	Of       int           // how many backends were awaited
}

func (e *NoVerdictError) Error() string {
	const show = 5
	names := make([]string, 0, show)
	for _, k := range e.Backends[:min(len(e.Backends), show)] {
		names = append(names, k.String())
	}
	more := ""
	if n := len(e.Backends) - show; n > 0 {
		more = fmt.Sprintf(" and %d more", n)
	}
	return fmt.Sprintf("health: %d of %d backends without a first verdict after %v (down until probed): %s%s",
		len(e.Backends), e.Of, e.After, strings.Join(names, ", "), more)
}

// report hands a verdict transition to the Sink and logs it.
func (m *Manager) report(k pool.Key, up bool, reason string) {
	state, level := "up", slog.LevelInfo
	if up {
		reason = ""
	} else {
		state, level = "down", slog.LevelWarn
	}
	m.sink.ObserveHealth(k, up, reason, m.clock.Now())
	// The backend's name too: an operator greps the log for the MTA the way HAProxy
	// writes it ("Server mx/mta1 is DOWN"), and the status, top and the events call it so.
	attrs := []any{"pool", k.Pool, "backend", k.Addr}
	if name := m.name(k); name != "" {
		attrs = append(attrs, "name", name)
	}
	attrs = append(attrs, "state", state)
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	m.log.Log(context.Background(), level, "backend health changed", attrs...)
}

// name is k's configured name in the view in force, "" without one.
func (m *Manager) name(k pool.Key) string {
	m.mu.Lock()
	v := m.view
	m.mu.Unlock()
	if v == nil {
		return ""
	}
	if b := v.Backend(k); b != nil {
		return b.Name
	}
	return ""
}

// runAgent asks one backend's agent every interval and passes every answer on.
func (m *Manager) runAgent(ctx context.Context, k pool.Key, c agentConfig) {
	p := &agent.Probe{Addr: c.Addr, Timeout: c.Timeout}
	if m.dialer != nil {
		p.Dialer = m.dialer
	}
	delay := firstDelay(c.Interval)
	for n := 0; ; n++ {
		if !m.wait(ctx, delay) {
			return
		}
		r, _, err := p.Check(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.log.Debug("probe failed", "pool", k.Pool, "backend", k.Addr, "check", "agent", "reason", err.Error())
		}
		m.sink.ObserveAgent(k, agentReport(r), err, m.clock.Now())
		delay = nextDelay(c.Interval, n == 0)
	}
}

// agentReport converts the wire report to the pool's; both use -1 for "absent".
func agentReport(r agent.Report) pool.AgentReport {
	return pool.AgentReport{
		State: r.State, Reason: r.Reason, Percent: r.Percent, MaxConn: r.MaxConn,
		Queue: r.Queue, Incoming: r.Incoming, Active: r.Active, Deferred: r.Deferred, Hold: r.Hold,
		Load1: r.Load1, Load5: r.Load5, Load15: r.Load15, CPU: r.CPU, Mem: r.Mem, Disk: r.Disk, Inodes: r.Inodes,
	}
}

// wait waits d on the Manager's clock; false when ctx is done first.
func (m *Manager) wait(ctx context.Context, d time.Duration) bool {
	t := m.clock.NewTimer(d)
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C():
		return true
	}
}

// firstDelay is uniform in [0, min(interval, MaxFirstDelay)); see MaxFirstDelay.
func firstDelay(interval time.Duration) time.Duration {
	span := min(interval, MaxFirstDelay)
	if span <= 0 {
		return 0
	}
	return rand.N(span)
}

// nextDelay is the wait after a probe: uniform in (0, interval] after the first one, then
// interval ± Jitter.
func nextDelay(interval time.Duration, afterFirst bool) time.Duration {
	if interval <= 0 {
		return 0
	}
	if afterFirst {
		return 1 + rand.N(interval)
	}
	j := time.Duration(float64(interval) * Jitter)
	if j <= 0 {
		return interval
	}
	return interval - j + rand.N(2*j+1)
}

// workerKeys lists the running workers, for tests.
func (m *Manager) workerKeys() map[workerKey]want {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[workerKey]want, len(m.workers))
	for wk, w := range m.workers {
		out[wk] = w.want
	}
	return out
}
