package health

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
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

// Defaults for pools whose spec leaves a field zero (config.ApplySpecDefaults normally
// fills them in; these keep a hand-built spec from probing in a tight loop).
const (
	DefaultInterval      = 2 * time.Second // HAProxy's inter 2s
	DefaultRise          = 2
	DefaultFall          = 3
	DefaultAgentInterval = 2 * time.Second // HAProxy's agent-inter 2s
	DefaultAgentTimeout  = time.Second
)

// MaxFirstDelay caps the delay before a worker's first probe. The first probe of each
// backend is spread uniformly over [0, min(interval, MaxFirstDelay)), so that 90 backends
// are not probed in the same millisecond (90 over 250 ms is one every ~3 ms) while a fresh
// balancer, whose backends start down, has its verdicts within a quarter second instead of
// a whole interval. The second probe then lands uniformly in (0, interval] after the first,
// which spreads the steady-state probes over the whole interval without ever leaving a gap
// longer than one interval; from then on every interval is jittered by ±Jitter so that
// phases do not lock together again.
const MaxFirstDelay = 250 * time.Millisecond

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
	// DefaultHELO is the HELO name of pools whose health.helo is empty (the node's name).
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
	wg      sync.WaitGroup // running workers; Run waits for them
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
}

// New returns a Manager that starts nothing until Run.
func New(o Options) *Manager {
	m := &Manager{
		sink: o.Sink, clock: o.Clock, log: o.Logger, helo: o.DefaultHELO, dialer: o.Dialer,
		newChecker: o.NewChecker,
		desired:    map[workerKey]want{},
		workers:    map[workerKey]*worker{},
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
}

// wants lists the workers view v asks for.
func (m *Manager) wants(v *pool.View) map[workerKey]want {
	out := map[workerKey]want{}
	if v == nil {
		return out
	}
	for _, name := range v.Order {
		p := v.Pools[name]
		if p == nil {
			continue
		}
		h, a := p.Spec.Health, p.Spec.Agent
		for _, b := range p.Backends {
			if b.Admin == pool.Maint {
				continue // maint: out of rotation and not probed
			}
			if !h.Disabled {
				c := ProbeConfig{
					Addr: b.Addr, Interval: h.Interval.D(), Timeout: h.Timeout.D(),
					Rise: h.Rise, Fall: h.Fall, HELO: h.HELO, StartTLS: h.StartTLS,
					MailFrom: h.MailFrom, RcptTo: h.RcptTo, Proxy: b.Identity,
				}
				if c.Interval <= 0 {
					c.Interval = DefaultInterval
				}
				if c.Timeout <= 0 {
					c.Timeout = DefaultTimeout
				}
				if c.Rise <= 0 {
					c.Rise = DefaultRise
				}
				if c.Fall <= 0 {
					c.Fall = DefaultFall
				}
				if c.HELO == "" {
					c.HELO = m.helo
				}
				out[workerKey{b.Key, kindSMTP}] = want{smtp: c, health: b.Health}
			}
			if a != nil && b.AgentAddr != "" {
				c := agentConfig{Addr: b.AgentAddr, Interval: a.Interval.D(), Timeout: a.Timeout.D()}
				if c.Interval <= 0 {
					c.Interval = DefaultAgentInterval
				}
				if c.Timeout <= 0 {
					c.Timeout = DefaultAgentTimeout
				}
				out[workerKey{b.Key, kindAgent}] = want{agent: c}
			}
		}
	}
	return out
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
	w := &worker{want: d, cancel: cancel, passive: make(chan string, 1)}
	m.workers[wk] = w
	m.wg.Add(1)
	switch wk.kind {
	case kindSMTP:
		chk := m.newChecker(wk.Key, d.smtp)
		go func() {
			defer m.wg.Done()
			defer cancel()
			m.runSMTP(ctx, wk.Key, d.smtp, chk, st, w.passive)
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

// runSMTP probes one backend every interval and reports verdict transitions.
func (m *Manager) runSMTP(ctx context.Context, k pool.Key, c ProbeConfig, chk Checker, st State, passive <-chan string) {
	delay := firstDelay(c.Interval)
	for n := 0; ; n++ {
		t := m.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case why := <-passive:
			t.Stop()
			if st.Up || !st.Checked {
				m.report(k, false, "passive: "+why)
			}
			st = State{Up: false, Checked: true}
			delay = c.Interval // then probe again after an interval: rise successes bring it back
			continue
		case <-t.C():
		}
		res := chk.Check(ctx)
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
		var changed bool
		if st, changed = Step(st, res.OK, c.Rise, c.Fall); changed {
			m.report(k, st.Up, res.Reason)
		}
		delay = nextDelay(c.Interval, n == 0)
	}
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
	m.log.Log(context.Background(), level, "backend health changed",
		"pool", k.Pool, "backend", k.Addr, "state", state, "reason", reason)
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
