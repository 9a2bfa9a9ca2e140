package pool

import (
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/config"
)

// Table owns the pool view. Writers (spec changes, health verdicts, agent reports) are
// serialised by one mutex and each publishes a new immutable View; readers call View and
// never lock. Observed state (health, load, stats) survives spec changes for backends that
// stay in the spec, keyed by pool and address.
type Table struct {
	mu       sync.Mutex // serialises writers; guards spec, observed, gen
	spec     config.Spec
	observed map[Key]*observed
	pstats   map[string]*PoolStats
	gen      uint64
	now      func() time.Time

	view    atomic.Pointer[View]
	changed chan struct{} // one slot: a new View was published since the last receive
}

type observed struct {
	health Health
	load   Load
	stats  *Stats
}

// NewTable returns an empty table. now may be nil (time.Now).
func NewTable(now func() time.Time) *Table {
	if now == nil {
		now = time.Now
	}
	t := &Table{observed: map[Key]*observed{}, pstats: map[string]*PoolStats{}, now: now,
		changed: make(chan struct{}, 1)}
	t.view.Store(&View{Pools: map[string]*Pool{}})
	return t
}

// Changed receives after a new View was published (coalesced: one receive may stand for
// many views). One reader: the node's loop that feeds health checks and DNS.
func (t *Table) Changed() <-chan struct{} { return t.changed }

// View returns the current snapshot. Never nil.
func (t *Table) View() *View { return t.view.Load() }

// Spec returns a copy of the spec the current view was built from, the caller's to
// change: the pools of the view read the table's own (a backend's identity at every
// new backend connection), and a copy sharing its slices let a caller's edit race them.
func (t *Table) Spec() config.Spec {
	t.mu.Lock()
	defer t.mu.Unlock()
	return *t.spec.Clone()
}

// SetSpec replaces the pools. The spec must be validated and defaulted. Backends that stay
// keep their observed state and counters; new ones start down until probed (or up at once
// when their pool's health checks are disabled).
func (t *Table) SetSpec(spec config.Spec) {
	spec = *spec.Clone() // the table's own: the caller may go on changing its spec
	t.mu.Lock()
	defer t.mu.Unlock()
	t.spec = spec
	keep := map[Key]bool{}
	keepPools := map[string]bool{}
	for _, p := range spec.Pools {
		keepPools[p.Name] = true
		for _, b := range p.Backends {
			k := Key{p.Name, b.Address}
			keep[k] = true
			if t.observed[k] == nil {
				o := &observed{load: NoLoad, stats: &Stats{}}
				if p.Health.Disabled {
					o.health = Health{Up: true, Checked: true, Since: time.Time{}, Reason: "health checks disabled"}
				}
				t.observed[k] = o
			}
		}
	}
	for k := range t.observed {
		if !keep[k] {
			delete(t.observed, k)
		}
	}
	for n := range t.pstats {
		if !keepPools[n] {
			delete(t.pstats, n)
		}
	}
	t.publish()
}

// ObserveHealth records a rise/fall verdict (up or down) for k at time at.
func (t *Table) ObserveHealth(k Key, up bool, reason string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.observed[k]
	if o == nil {
		return
	}
	if o.health.Up != up || !o.health.Checked {
		o.health.Since = at
	}
	o.health.Up, o.health.Checked, o.health.Reason = up, true, reason
	t.publish()
}

// ObserveAgent applies one agent answer (err == nil) or failed agent probe to k.
func (t *Table) ObserveAgent(k Key, r AgentReport, err error, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.observed[k]
	if o == nil {
		return
	}
	var lim Limits
	for _, p := range t.spec.Pools {
		if p.Name == k.Pool && p.Agent != nil {
			lim = Limits{QueueHigh: p.Agent.QueueHigh, DiskHigh: p.Agent.DiskHigh}
		}
	}
	next := NextLoad(o.load, r, err, lim, at)
	if next == o.load {
		return
	}
	o.load = next
	t.publish()
}

// Stats returns the counters of k (nil when k is not in the spec).
func (t *Table) Stats(k Key) *Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	if o := t.observed[k]; o != nil {
		return o.stats
	}
	return nil
}

// publish builds a new View from spec and observed; t.mu is held.
func (t *Table) publish() {
	t.gen++
	v := &View{Gen: t.gen, Pools: make(map[string]*Pool, len(t.spec.Pools))}
	for _, pc := range t.spec.Pools {
		ps := t.pstats[pc.Name]
		if ps == nil {
			ps = &PoolStats{}
			t.pstats[pc.Name] = ps
		}
		p := &Pool{
			Name: pc.Name, Fallback: pc.Fallback, Proxy: pc.ProxyProtocol, MaxConn: pc.MaxConn,
			SlowStart: pc.EffectiveSlowStart(), Stats: ps, Spec: pc,
		}
		if p.Proxy == "" {
			p.Proxy = "none"
		}
		if pc.Agent != nil {
			p.QueueHigh, p.DiskHigh = pc.Agent.QueueHigh, pc.Agent.DiskHigh
		}
		for _, bc := range pc.Backends {
			k := Key{pc.Name, bc.Address}
			o := t.observed[k]
			admin, _ := ParseAdmin(bc.State)
			ap, _ := netip.ParseAddrPort(bc.Address)
			b := &Backend{
				Key: k, AddrPort: ap, Name: bc.Name, Weight: bc.EffectiveWeight(), MaxConn: bc.MaxConn,
				Admin: admin, Health: o.health, Load: o.load, Stats: o.stats, Identity: p.Proxy,
			}
			if bc.Identity != "" {
				b.Identity = bc.Identity
			}
			if pc.Agent != nil {
				b.AgentAddr = bc.Agent
				if b.AgentAddr == "" && ap.IsValid() {
					b.AgentAddr = net.JoinHostPort(ap.Addr().String(), strconv.Itoa(pc.Agent.Port))
				}
			}
			p.Backends = append(p.Backends, b)
		}
		v.Pools[p.Name] = p
		v.Order = append(v.Order, p.Name)
	}
	for _, p := range v.Pools {
		seen := map[string]bool{}
		for q := p; q != nil && !seen[q.Name]; q = v.Pools[q.Fallback] {
			seen[q.Name] = true
			p.Chain = append(p.Chain, q)
		}
	}
	t.view.Store(v)
	select {
	case t.changed <- struct{}{}:
	default:
	}
}
