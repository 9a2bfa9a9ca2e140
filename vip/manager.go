package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/config"
)

// Defaults of Config.
const (
	// DefaultReconcileInterval bounds how long an address removed by hand stays away.
	DefaultReconcileInterval = 2 * time.Second
	// DefaultAnnounceCount and DefaultAnnounceSpacing: a burst of 5 announcements
	// 200 ms apart, as keepalived sends (garp_master_repeat 5).
	DefaultAnnounceCount   = 5
	DefaultAnnounceSpacing = 200 * time.Millisecond
	// DefaultAnnounceRepeat: a second burst this long after taking a VIP
	// (keepalived's garp_master_delay), for switches and hosts that missed the first.
	DefaultAnnounceRepeat = 5 * time.Second
	// DefaultRefreshInterval: a burst this often for every held VIP, so a cache
	// that went stale some other way (a partition, a host that ignored the first
	// bursts) heals within a minute (keepalived: garp_master_refresh, off by default).
	DefaultRefreshInterval = 60 * time.Second
	// DefaultHandoverTimeout: how long a node keeps a VIP it no longer owns while
	// the new owner, alive, has not yet claimed it (see Manager).
	DefaultHandoverTimeout = 2 * time.Second
	// DefaultSettle: after members come back (a partition heals, a node joins), a VIP
	// not held here is taken only this long later, so that the returning members' claims
	// (carried by their first heartbeats and gossip) are known first. Without it a node
	// regaining quorum could take a VIP the other side holds, for a moment two holders.
	// Failover (members going away) is not delayed.
	DefaultSettle = 500 * time.Millisecond
)

// Config configures a Manager. Zero durations and counts take the defaults;
// a negative AnnounceRepeat, RefreshInterval or HandoverTimeout disables it.
type Config struct {
	Node      string    // this node's name, as in Member.Name; required
	Addresser Addresser // required
	Announcer Announcer // required
	Label     string    // marks our addresses; default DefaultLabel
	Clock     Clock     // default SystemClock
	Logger    *slog.Logger

	ReconcileInterval time.Duration
	AnnounceCount     int
	AnnounceSpacing   time.Duration
	AnnounceRepeat    time.Duration
	RefreshInterval   time.Duration
	HandoverTimeout   time.Duration
	Settle            time.Duration // see DefaultSettle; negative disables
}

// View is what the Manager decides from: the spec's VIPs and the members as
// this node sees them (see Owners). The Manager reads it from its own
// goroutine; the caller must not change it (nor its slices) after Update.
type View struct {
	VIPs    []config.VIP
	Members []Member
	Quorum  bool
}

// Manager holds this node's share of the VIPs: it computes Owners from the
// newest View, adds the VIPs this node owns and announces them, removes the
// ones it does not, and puts back any that disappear (someone ran `ip addr
// del`) within ReconcileInterval.
//
// Announcements: a burst of AnnounceCount, AnnounceSpacing apart, when a VIP
// is added; another burst AnnounceRepeat later; a burst every RefreshInterval;
// and a burst for every held VIP when the set of alive members changes (a
// partition healed, a node returned).
//
// Handover: when a VIP's owner becomes another alive node, this node keeps the
// address (without announcing it) until that node claims it in its Held, at
// most HandoverTimeout, so a drain or a preemption leaves no moment without a
// holder; the new owner's announcements take the traffic. When no node owns
// it (spec change, no candidate, quorum lost) the address goes at once.
//
// Concurrency: New builds, Run works (one goroutine owns the decision state),
// Update, Held and HeldChanged may be called from any goroutine at
// any time; ReleaseAll and CleanStale too, and they exclude Run's kernel
// changes while they run. Run does not remove addresses when it returns:
// call ReleaseAll before leaving the cluster.
type Manager struct {
	// Immutable after New.
	cfg Config
	log *slog.Logger

	updates  chan View     // cap 1: the newest View Run has not taken yet
	kernel   chan struct{} // cap 1: held while changing addresses
	heldCh   chan struct{} // cap 1: Held changed
	released atomic.Bool   // ReleaseAll was called: hold nothing from now on
	running  atomic.Bool

	mu   sync.Mutex // guards held
	held []netip.Prefix
}

// New checks cfg and builds a Manager. It touches no address.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.Node == "":
		return nil, errors.New("vip: Config.Node is required")
	case cfg.Addresser == nil || cfg.Announcer == nil:
		return nil, errors.New("vip: Config.Addresser and Config.Announcer are required")
	}
	if cfg.Label == "" {
		cfg.Label = DefaultLabel
	}
	if !validLabel(cfg.Label) {
		return nil, fmt.Errorf("vip: label %q: want 1..%d letters, digits, '_' or '-'", cfg.Label, MaxLabelLen)
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.ReconcileInterval, DefaultReconcileInterval)
	def(&cfg.AnnounceSpacing, DefaultAnnounceSpacing)
	def(&cfg.AnnounceRepeat, DefaultAnnounceRepeat)
	def(&cfg.RefreshInterval, DefaultRefreshInterval)
	def(&cfg.HandoverTimeout, DefaultHandoverTimeout)
	def(&cfg.Settle, DefaultSettle)
	if cfg.AnnounceCount == 0 {
		cfg.AnnounceCount = DefaultAnnounceCount
	}
	if cfg.ReconcileInterval < 0 || cfg.AnnounceSpacing < 0 || cfg.AnnounceCount < 0 {
		return nil, errors.New("vip: negative ReconcileInterval, AnnounceSpacing or AnnounceCount")
	}
	return &Manager{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "vip", "node", cfg.Node),
		updates: make(chan View, 1),
		kernel:  make(chan struct{}, 1),
		heldCh:  make(chan struct{}, 1),
	}, nil
}

// Update hands the Manager a new View; Run reconciles at once. A View not yet
// taken by Run is replaced. Never blocks.
func (m *Manager) Update(v View) {
	for {
		select {
		case m.updates <- v:
			return
		default:
		}
		select {
		case <-m.updates:
		default:
		}
	}
}

// Held returns the VIPs on this host's interfaces after the last change, sorted:
// what the node claims in its metadata (as Key: p.Addr().String()).
func (m *Manager) Held() []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.held)
}

// HeldChanged receives a value after Held changed (one pending signal at
// most; read Held after receiving). For publishing metadata.
func (m *Manager) HeldChanged() <-chan struct{} { return m.heldCh }

func (m *Manager) setHeld(ps []netip.Prefix) {
	slices.SortFunc(ps, comparePrefix)
	m.mu.Lock()
	changed := !slices.Equal(m.held, ps)
	if changed {
		m.held = ps
	}
	m.mu.Unlock()
	if changed {
		select {
		case m.heldCh <- struct{}{}:
		default:
		}
	}
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func (m *Manager) lock(ctx context.Context) error {
	select {
	case m.kernel <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) unlock() { <-m.kernel }

// ReleaseAll removes every labelled address and makes the Manager hold nothing
// from then on (Run keeps running but adds nothing). For SIGTERM and for a
// node leaving the cluster: call it before leaving, so the others see the VIPs
// free. A drain does not need it: a drained node owns no VIP and hands its
// VIPs over. It returns the errors of the addresses it could not remove.
func (m *Manager) ReleaseAll(ctx context.Context) error {
	m.released.Store(true)
	_, err := m.removeAll(ctx, "released")
	return err
}

// CleanStale removes every labelled address: the leftovers of a predecessor
// that was killed with its link up. Call it at start-up, before joining the
// cluster (before Run); it returns what it removed.
func (m *Manager) CleanStale(ctx context.Context) ([]Addr, error) {
	return m.removeAll(ctx, "removed stale")
}

// Adopt makes the labelled addresses on the host this Manager's from the start: Held
// reports them at once, and Run's first reconcile keeps them, or hands them over, as
// its own. For a process that takes over from a running predecessor of the same node
// (an upgrade), instead of CleanStale; call it before Run. It returns what it adopted.
func (m *Manager) Adopt(ctx context.Context) ([]Addr, error) {
	if err := m.lock(ctx); err != nil {
		return nil, fmt.Errorf("vip: adopt: %w", err)
	}
	defer m.unlock()
	addrs, err := m.cfg.Addresser.List(m.cfg.Label)
	if err != nil {
		return nil, err
	}
	ps := make([]netip.Prefix, 0, len(addrs))
	for _, a := range addrs {
		ps = append(ps, a.Prefix)
	}
	m.setHeld(ps)
	return addrs, nil
}

func (m *Manager) removeAll(ctx context.Context, what string) ([]Addr, error) {
	if err := m.lock(ctx); err != nil {
		return nil, fmt.Errorf("vip: %s: %w", what, err)
	}
	defer m.unlock()
	addrs, err := m.cfg.Addresser.List(m.cfg.Label)
	if err != nil {
		return nil, err
	}
	var removed []Addr
	var left []netip.Prefix
	var errs []error
	for _, a := range addrs {
		if err := m.cfg.Addresser.Del(a.Interface, a.Prefix, m.cfg.Label); err != nil {
			errs = append(errs, err)
			left = append(left, a.Prefix)
			continue
		}
		removed = append(removed, a)
		m.log.Info(what+" VIP", "vip", a.Prefix.String(), "interface", a.Interface)
	}
	m.setHeld(left)
	return removed, errors.Join(errs...)
}

// Run reconciles and announces until ctx ends; it returns nil then. It does
// nothing until the first Update. A Manager runs once.
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("vip: Manager.Run called twice")
	}
	l := &loop{m: m, held: map[Addr]*announce{}, errs: map[string]string{}}
	for {
		now := m.cfg.Clock.Now()
		if l.view != nil && !now.Before(l.nextReconcile) {
			if err := l.reconcile(ctx, now); err != nil {
				return nil // ctx ended while waiting for the kernel lock
			}
		}
		l.sendDue(now)

		var fire <-chan time.Time
		var timer Timer
		if wake, ok := l.nextWake(); ok {
			timer = m.cfg.Clock.NewTimer(max(wake.Sub(now), 0))
			fire = timer.C()
		}
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case v := <-m.updates:
			l.setView(v)
			l.nextReconcile = time.Time{}
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// vipSpec is a parsed config.VIP.
type vipSpec struct {
	key    string
	prefix netip.Prefix
	iface  string
}

// announce is the announcement schedule of one held address.
type announce struct {
	quiet   bool      // handing over: do not announce
	left    int       // packets left in the current burst
	next    time.Time // when the next packet of the burst is due
	repeat  time.Time // the second burst after taking it; zero: none
	refresh time.Time // the next refresh burst; zero: none
}

// loop is Run's state; only Run's goroutine touches it.
type loop struct {
	m             *Manager
	view          *View
	specs         []vipSpec
	owners        map[string]string
	claims        map[string][]string // VIP key -> alive members claiming it
	alive         map[string]bool
	held          map[Addr]*announce // our addresses after the last reconcile
	losing        map[string]time.Time
	errs          map[string]string // subject -> last error logged
	nextReconcile time.Time
	settleUntil   time.Time // no new VIP is taken before this (see DefaultSettle)
}

func (l *loop) setView(v View) {
	l.view = &v
	l.specs = l.specs[:0]
	for _, c := range v.VIPs {
		p, err := netip.ParsePrefix(c.Address)
		if err != nil {
			l.report("spec "+c.Address, err)
			continue
		}
		l.specs = append(l.specs, vipSpec{key: p.Addr().String(), prefix: p, iface: c.Interface})
	}
	l.owners = Owners(v.VIPs, v.Members, v.Quorum)
	l.claims = map[string][]string{}
	alive := map[string]bool{}
	for _, mb := range v.Members {
		if !mb.Alive {
			continue
		}
		alive[mb.Name] = true
		for _, k := range mb.Held {
			l.claims[k] = append(l.claims[k], mb.Name)
		}
	}
	if l.alive != nil && !maps.Equal(l.alive, alive) {
		l.m.log.Debug("members changed: announcing held VIPs again")
		l.burstAll(l.m.cfg.Clock.Now())
	}
	for name := range alive {
		if l.alive != nil && !l.alive[name] && l.m.cfg.Settle > 0 {
			l.settleUntil = l.m.cfg.Clock.Now().Add(l.m.cfg.Settle)
		}
	}
	l.alive = alive
}

// report logs an error once per distinct message and subject.
func (l *loop) report(subject string, err error) {
	if err == nil {
		if _, ok := l.errs[subject]; ok {
			delete(l.errs, subject)
			l.m.log.Info("recovered", "what", subject)
		}
		return
	}
	if l.errs[subject] == err.Error() {
		return
	}
	l.errs[subject] = err.Error()
	l.m.log.Warn("VIP operation failed", "what", subject, "err", err)
}

// reconcile makes the kernel match the view. It fails only when ctx ends.
func (l *loop) reconcile(ctx context.Context, now time.Time) error {
	m := l.m
	if err := m.lock(ctx); err != nil {
		return err
	}
	defer m.unlock()
	l.nextReconcile = now.Add(m.cfg.ReconcileInterval)
	released := m.released.Load()
	actual, err := m.cfg.Addresser.List(m.cfg.Label)
	l.report("list addresses", err)
	if err != nil {
		return nil
	}

	desired := map[string]Addr{}
	unknown := map[string]bool{} // ours, but its interface cannot be found now: leave it be
	if !released {
		for _, s := range l.specs {
			if l.owners[s.key] != m.cfg.Node {
				continue
			}
			ifname := s.iface
			if ifname == "" {
				ifname, err = m.cfg.Addresser.InterfaceFor(s.prefix.Addr())
				l.report("interface for "+s.key, err)
				if err != nil {
					unknown[s.key] = true
					continue
				}
			}
			desired[s.key] = Addr{Interface: ifname, Prefix: s.prefix}
		}
	}

	held := map[Addr]*announce{}
	losing := map[string]time.Time{}
	for _, a := range actual {
		key := a.Prefix.Addr().String()
		if w, ok := desired[key]; ok && w == a {
			held[a] = l.track(a, now, false)
			continue
		}
		if _, ok := desired[key]; !ok && !released {
			if unknown[key] {
				held[a] = l.track(a, now, false)
				continue
			}
			if deadline, keep := l.handover(key, now); keep {
				losing[key] = deadline
				held[a] = l.track(a, now, true)
				continue
			}
		}
		err := m.cfg.Addresser.Del(a.Interface, a.Prefix, m.cfg.Label)
		l.report("remove "+a.Prefix.String()+" from "+a.Interface, err)
		if err != nil {
			held[a] = l.track(a, now, true)
			continue
		}
		m.log.Info("released VIP", "vip", a.Prefix.String(), "interface", a.Interface, "owner", l.owners[key])
	}
	for key, w := range desired {
		if _, ok := held[w]; ok {
			continue
		}
		if now.Before(l.settleUntil) {
			if l.nextReconcile.After(l.settleUntil) {
				l.nextReconcile = l.settleUntil
			}
			continue
		}
		err := m.cfg.Addresser.Add(w.Interface, w.Prefix, m.cfg.Label)
		l.report("add "+w.Prefix.String()+" to "+w.Interface, err)
		if err != nil {
			continue
		}
		delete(l.held, w) // it was gone: announce as new
		held[w] = l.track(w, now, false)
		m.log.Info("took VIP", "vip", w.Prefix.String(), "interface", w.Interface, "key", key)
	}
	l.held, l.losing = held, losing
	ps := make([]netip.Prefix, 0, len(held))
	for a := range held {
		ps = append(ps, a.Prefix)
	}
	m.setHeld(ps)
	return nil
}

// track returns the schedule of a held address; one that was not held or was
// being handed over starts with an acquisition burst.
func (l *loop) track(a Addr, now time.Time, quiet bool) *announce {
	s, ok := l.held[a]
	if !ok {
		s = &announce{quiet: true}
	}
	if s.quiet && !quiet {
		l.acquire(s, now)
	}
	s.quiet = quiet
	return s
}

// handover reports whether to keep key, which another node now owns, and until when.
func (l *loop) handover(key string, now time.Time) (time.Time, bool) {
	owner := l.owners[key]
	if owner == "" || l.m.cfg.HandoverTimeout < 0 || slices.Contains(l.claims[key], owner) {
		return time.Time{}, false
	}
	deadline, ok := l.losing[key]
	if !ok {
		deadline = now.Add(l.m.cfg.HandoverTimeout)
	}
	return deadline, now.Before(deadline)
}

func (l *loop) acquire(s *announce, now time.Time) {
	cfg := &l.m.cfg
	// Taking (or taking back) an address is announced at once, even if an
	// earlier burst's spacing would put the next packet later.
	s.next = now
	l.burst(s, now)
	s.repeat, s.refresh = time.Time{}, time.Time{}
	if cfg.AnnounceRepeat > 0 {
		s.repeat = now.Add(cfg.AnnounceRepeat)
	}
	if cfg.RefreshInterval > 0 {
		s.refresh = now.Add(cfg.RefreshInterval)
	}
}

func (l *loop) burst(s *announce, now time.Time) {
	s.left = l.m.cfg.AnnounceCount
	if s.next.Before(now) {
		s.next = now
	}
}

func (l *loop) burstAll(now time.Time) {
	for _, s := range l.held {
		if !s.quiet {
			l.burst(s, now)
		}
	}
}

// sendDue sends the announcements that are due.
func (l *loop) sendDue(now time.Time) {
	if l.m.released.Load() {
		return
	}
	cfg := &l.m.cfg
	for a, s := range l.held {
		if s.quiet {
			continue
		}
		if !s.repeat.IsZero() && !now.Before(s.repeat) {
			s.repeat = time.Time{}
			l.burst(s, now)
		}
		if !s.refresh.IsZero() && !now.Before(s.refresh) {
			s.refresh = now.Add(cfg.RefreshInterval)
			l.burst(s, now)
		}
		if s.left > 0 && !now.Before(s.next) {
			s.left--
			s.next = now.Add(cfg.AnnounceSpacing)
			err := cfg.Announcer.Announce(a.Interface, a.Prefix.Addr())
			l.report("announce "+a.Prefix.Addr().String()+" on "+a.Interface, err)
		}
	}
}

// nextWake is when Run has work next without new input.
func (l *loop) nextWake() (time.Time, bool) {
	var t time.Time
	ok := false
	consider := func(c time.Time) {
		if !c.IsZero() && (!ok || c.Before(t)) {
			t, ok = c, true
		}
	}
	if l.view != nil {
		consider(l.nextReconcile)
	}
	for _, d := range l.losing {
		consider(d)
	}
	if !l.m.released.Load() {
		for _, s := range l.held {
			if s.quiet {
				continue
			}
			if s.left > 0 {
				consider(s.next)
			}
			consider(s.repeat)
			consider(s.refresh)
		}
	}
	return t, ok
}
