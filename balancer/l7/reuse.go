package l7

import (
	"sync"
	"time"

	"github.com/mxlb/mxlb/balancer/frontend"
	"github.com/mxlb/mxlb/config"
	"github.com/mxlb/mxlb/pool"
)

// Defaults of the idle backend connection pool (Options.IdlePerBackend, BackendIdle).
const (
	// DefaultIdlePerBackend bounds the idle connections kept per backend of a pool that
	// sets no reuse_idle. Each holds one of the backend's smtpd processes (Postfix's
	// default_process_limit is 100).
	DefaultIdlePerBackend = config.DefaultReuseIdle
	// DefaultBackendIdle is how long an idle backend connection is kept unused; well
	// under Postfix's smtpd_timeout (300 s), so the backend rarely closes one first.
	DefaultBackendIdle = 10 * time.Second
	// backendMaxAge retires a connection that has served this long, whatever its use.
	backendMaxAge = time.Minute
	// sweepEvery is how often the idle connections are checked (their age, and whether
	// their backend is still usable in the current view) while there are any.
	sweepEvery = time.Second
)

// reusable identities: a connection whose identity is XCLIENT (sent again for each
// client) or none (the backend sees mxlb) can carry the next client's session; a PROXY
// header is once per connection, so those connections cannot.
func reusableIdentity(id string) bool { return id == "xclient" || id == "none" }

// idlePool keeps backend connections between client sessions, per backend, most
// recently used first out. A connection enters only between transactions (after the
// backend's 250 to the message or to RSET); the next session's XCLIENT (Postfix resets
// and greets again) or EHLO is its probe: one that fails there is closed and the session
// dials afresh, with no verdict on the backend and no attempt counted.
//
// Fields: s and the limits are immutable; the rest is under mu. sweeps counts the
// sweeper's runs so that close can wait for one in progress.
type idlePool struct {
	s       *Server
	max     int
	idleFor time.Duration
	// budget: each idle connection holds a descriptor of the process's session budget,
	// so that a pool of many backends cannot take the room the budget keeps for accept
	// and everything else (a pool of 16 per backend is 1,600 descriptors at 100 backends).
	budget *frontend.Budget

	mu       sync.Mutex
	conns    map[pool.Key][]*bconn
	n        int
	closed   bool // Shutdown or Close: nothing enters again
	draining bool // SetDraining(true): nothing enters until undrained
	timer    *time.Timer
	sweeps   sync.WaitGroup
}

func newIdlePool(s *Server, max int, idleFor time.Duration, budget *frontend.Budget) *idlePool {
	return &idlePool{s: s, max: max, idleFor: idleFor, budget: budget, conns: map[pool.Key][]*bconn{}}
}

// put offers bc, between transactions and no longer counted active, for the next
// session; false when it is not kept (the caller closes it).
func (ip *idlePool) put(bc *bconn) bool {
	if !reusableIdentity(bc.id) {
		return false
	}
	now := ip.s.opts.Clock.Now()
	if now.Sub(bc.born) >= backendMaxAge {
		return false
	}
	v := ip.s.opts.View()
	if b := v.Backend(bc.b.Key); b == nil {
		return false
	} else if ok, _ := b.Usable(); !ok {
		return false
	}
	limit := ip.max // the pool's reuse_idle, else the frontend's default
	if p := v.Pool(bc.b.Key.Pool); p != nil && p.Spec.ReuseIdle != 0 {
		limit = max(p.Spec.ReuseIdle, 0)
	}
	if limit <= 0 {
		return false
	}
	ip.mu.Lock()
	defer ip.mu.Unlock()
	k := bc.b.Key
	if ip.closed || ip.draining || len(ip.conns[k]) >= limit {
		return false
	}
	if !ip.budget.Hold(1) {
		return false
	}
	if !bc.shelve() {
		ip.budget.Release(1)
		return false
	}
	bc.idleSince = now
	ip.conns[k] = append(ip.conns[k], bc)
	ip.n++
	if ip.timer == nil {
		ip.timer = time.AfterFunc(sweepEvery, ip.sweep)
	}
	return true
}

// take returns an idle connection to k with identity id, most recent first; nil when
// none is fresh.
func (ip *idlePool) take(k pool.Key, id string) *bconn {
	if !reusableIdentity(id) {
		return nil
	}
	now := ip.s.opts.Clock.Now()
	ip.mu.Lock()
	defer ip.mu.Unlock()
	cs := ip.conns[k]
	for i := len(cs) - 1; i >= 0; i-- {
		bc := cs[i]
		if bc.id != id || now.Sub(bc.idleSince) >= ip.idleFor || now.Sub(bc.born) >= backendMaxAge {
			continue // left for the sweeper
		}
		ip.conns[k] = append(cs[:i], cs[i+1:]...)
		ip.n--
		ip.budget.Release(1) // the session that takes it counts it from now
		bc.unshelve()
		return bc
	}
	return nil
}

// sweep closes the connections that have idled too long, grown old, or whose backend is
// no longer usable (down, drained, in maintenance, removed), and runs again while any
// are left.
func (ip *idlePool) sweep() {
	ip.mu.Lock()
	if ip.closed {
		ip.mu.Unlock()
		return
	}
	ip.sweeps.Add(1)
	defer ip.sweeps.Done()
	now := ip.s.opts.Clock.Now()
	v := ip.s.opts.View()
	var gone []*bconn
	for k, cs := range ip.conns {
		usable := false
		if b := v.Backend(k); b != nil {
			usable, _ = b.Usable()
		}
		kept := cs[:0]
		for _, bc := range cs {
			if usable && now.Sub(bc.idleSince) < ip.idleFor && now.Sub(bc.born) < backendMaxAge {
				kept = append(kept, bc)
			} else {
				gone = append(gone, bc)
			}
		}
		clear(cs[len(kept):])
		if len(kept) == 0 {
			delete(ip.conns, k)
		} else {
			ip.conns[k] = kept
		}
	}
	ip.n -= len(gone)
	ip.budget.Release(len(gone))
	if ip.n > 0 {
		ip.timer.Reset(sweepEvery)
	} else {
		ip.timer = nil
	}
	ip.mu.Unlock()
	for _, bc := range gone {
		bc.close(true)
	}
}

// drain empties the pool (QUIT to each) and keeps it empty while d; SetDraining's.
func (ip *idlePool) drain(d bool) {
	ip.mu.Lock()
	ip.draining = d
	ip.mu.Unlock()
	if d {
		ip.flush(true)
	}
}

// close empties the pool for good: with QUIT (Shutdown) or by closing the sockets (Close).
func (ip *idlePool) close(quit bool) {
	ip.mu.Lock()
	ip.closed = true
	if ip.timer != nil {
		ip.timer.Stop()
		ip.timer = nil
	}
	ip.mu.Unlock()
	ip.sweeps.Wait()
	ip.flush(quit)
}

func (ip *idlePool) flush(quit bool) {
	ip.mu.Lock()
	var gone []*bconn
	for k, cs := range ip.conns {
		gone = append(gone, cs...)
		delete(ip.conns, k)
	}
	ip.n = 0
	ip.budget.Release(len(gone))
	ip.mu.Unlock()
	for _, bc := range gone {
		bc.close(quit)
	}
}

// idle is the number of pooled connections (tests).
func (ip *idlePool) idle() int {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	return ip.n
}
