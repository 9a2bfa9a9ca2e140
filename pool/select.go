package pool

import (
	"math/rand/v2"
	"time"
)

// Selection: weighted power-of-two-choices over active connections.
//
// Why not smooth weighted round-robin (nginx)? SWRR needs a lock (or a CAS loop) on shared
// per-pool state for every pick, and it is blind to load: an MTA that slows down (a slow
// disk, a content filter backing up) keeps receiving its full share while its sessions pile
// up. Weighted P2C draws two backends with probability proportional to their effective
// weights and takes the one with fewer active connections per unit of weight. It reads only
// the snapshot and atomics (no lock on the accept path), its shares equal the weights when
// backends are equally fast (with no connections open, the first draw wins every tie), and a
// backend whose sessions last longer gets proportionally fewer new ones (Little's law):
// exactly the signal a mail farm wants, before the queue agent even reports.

// Rand draws uniform numbers in [0, n). Tests pass a seeded one.
type Rand func(n uint64) uint64

// Attempts walks the backends to try for one connection, best first: the P2C winner, then
// the others of its pool in weighted random order, then the fallback pool's (and its
// fallback's), and, when nothing anywhere is usable but some backend is only saturated,
// the least loaded of those. Not safe for concurrent use; one per connection.
type Attempts struct {
	view  *View
	now   time.Time
	rnd   Rand
	pools []*Pool // the pool chain, the requested pool first
	pi    int     // index of the pool being walked
	tried []*Backend
	cand  []cand
	first bool
	last  bool // the saturated last resort was returned
	// Served is the pool of the last backend Next returned.
	Served *Pool
}

type cand struct {
	b *Backend
	w float64
}

// Attempts starts a selection in pool name at time now. rnd may be nil (math/rand/v2).
func (v *View) Attempts(name string, now time.Time, rnd Rand) *Attempts {
	a := &Attempts{}
	a.Reset(v, name, now, rnd)
	return a
}

// Reset makes a a new selection, as v.Attempts would, keeping its buffers: a caller that
// makes one selection per connection reuses a few instead of allocating each. A nil v
// only drops what a refers to.
func (a *Attempts) Reset(v *View, name string, now time.Time, rnd Rand) {
	if rnd == nil {
		rnd = rand.Uint64N
	}
	clear(a.tried)
	clear(a.cand)
	*a = Attempts{view: v, now: now, rnd: rnd, first: true, tried: a.tried[:0], cand: a.cand[:0]}
	if v == nil {
		return
	}
	if p := v.Pools[name]; p != nil {
		a.pools = p.Chain
	}
}

// Next returns the next backend to try, or nil when none is left.
func (a *Attempts) Next() *Backend {
	for a.pi < len(a.pools) {
		p := a.pools[a.pi]
		if b := a.nextIn(p); b != nil {
			a.Served = p
			a.tried = append(a.tried, b)
			return b
		}
		a.pi++
		a.first = true
		if a.pi < len(a.pools) {
			p.Stats.Spilled.Add(1)
		}
	}
	if !a.last {
		a.last = true
		if b, p := a.leastLoadedSaturated(); b != nil {
			a.Served = p
			a.tried = append(a.tried, b)
			return b
		}
	}
	return nil
}

func (a *Attempts) triedB(b *Backend) bool {
	for _, t := range a.tried {
		if t == b {
			return true
		}
	}
	return false
}

// nextIn picks among p's usable, untried backends.
func (a *Attempts) nextIn(p *Pool) *Backend {
	if p.MaxConn > 0 && p.Stats.Active.Load() >= int64(p.MaxConn) {
		return nil
	}
	a.cand = a.cand[:0]
	var total float64
	for _, b := range p.Backends {
		if a.triedB(b) {
			continue
		}
		if w := b.EffectiveWeight(a.now, p.SlowStart); w > 0 {
			a.cand = append(a.cand, cand{b, w})
			total += w
		}
	}
	switch len(a.cand) {
	case 0:
		return nil
	case 1:
		return a.cand[0].b
	}
	x := a.draw(total)
	if !a.first {
		return x.b
	}
	a.first = false
	y := a.draw(total)
	// Fewer active connections per unit of weight wins; ties go to the first draw so that,
	// with nothing open, the shares are exactly the weights.
	if float64(y.b.Stats.Active.Load())*x.w < float64(x.b.Stats.Active.Load())*y.w {
		return y.b
	}
	return x.b
}

// draw picks a candidate with probability proportional to its weight.
func (a *Attempts) draw(total float64) cand {
	const scale = 1 << 53
	r := float64(a.rnd(scale)) / scale * total
	for _, c := range a.cand {
		if r < c.w {
			return c
		}
		r -= c.w
	}
	return a.cand[len(a.cand)-1]
}

// leastLoadedSaturated is the last resort when every backend of the chain is unusable: the
// healthy, enabled backend with the smallest queue among those only saturated.
func (a *Attempts) leastLoadedSaturated() (*Backend, *Pool) {
	var best *Backend
	var bestPool *Pool
	for _, p := range a.pools {
		for _, b := range p.Backends {
			if !b.Load.Saturated || b.Admin != Enabled || !b.Health.Up || b.Load.State != AgentUp || a.triedB(b) {
				continue
			}
			if best == nil || b.Load.Pressure < best.Load.Pressure {
				best, bestPool = b, p
			}
		}
	}
	return best, bestPool
}
