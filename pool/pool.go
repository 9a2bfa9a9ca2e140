// Package pool is mxlb's domain model: pools of backends (MTAs), their admin state
// (enabled / drain / maint, from the spec), their observed state (health, queue depth from
// the agent, active connections) and the selection of a backend for a new connection,
// including spill-over to a pool's fallback.
//
// It does no I/O. One writer, the Table, applies changes and publishes immutable View
// snapshots through an atomic pointer; the accept path, the DNS handler and the admin API
// read snapshots without locks. The only mutable things a View points at are the Stats
// counters, which are atomics shared across snapshots so that a spec change does not reset
// a backend's connection counts.
package pool

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/mxlb/mxlb/config"
)

// Admin is the operator's state of a backend.
type Admin uint8

const (
	// Enabled backends take new connections when healthy.
	Enabled Admin = iota
	// Drain backends take no new connections; open ones finish. Probes go on.
	Drain
	// Maint backends are out of rotation and not probed.
	Maint
)

// ParseAdmin reads "enabled" (or ""), "drain" or "maint".
func ParseAdmin(s string) (Admin, error) {
	switch s {
	case "", "enabled":
		return Enabled, nil
	case "drain":
		return Drain, nil
	case "maint":
		return Maint, nil
	}
	return Enabled, fmt.Errorf("pool: admin state %q is not one of enabled, drain, maint", s)
}

func (a Admin) String() string {
	switch a {
	case Drain:
		return "drain"
	case Maint:
		return "maint"
	}
	return "enabled"
}

// Key names a backend: its pool and its address.
type Key struct {
	Pool string
	Addr string
}

func (k Key) String() string { return k.Pool + "/" + k.Addr }

// Stats are a backend's counters. They live as long as the backend is in the spec and are
// shared by every View; the balancer updates them atomically.
type Stats struct {
	Active     atomic.Int64  // open proxied connections
	Total      atomic.Uint64 // connections proxied (dial succeeded)
	BytesIn    atomic.Uint64 // client -> backend
	BytesOut   atomic.Uint64 // backend -> client
	DialErrors atomic.Uint64
	// DialFailsInRow counts failed dials since the last good one (a passive health
	// signal: the balancer reports a backend that refuses connect after connect).
	DialFailsInRow atomic.Int32
	ProbeNanos     atomic.Int64 // latency of the last successful SMTP probe
	ProbeFails     atomic.Uint64
}

// PoolStats are a pool's counters, shared like Stats.
type PoolStats struct {
	Active  atomic.Int64  // open connections served by this pool's backends
	Spilled atomic.Uint64 // connections this pool could not take that went to its fallback
	Refused atomic.Uint64 // connections answered 421 because nothing was usable
}

// Health is the observed result of the SMTP probes, after rise/fall.
type Health struct {
	Up      bool
	Checked bool      // at least one verdict; false until the first rise/fall decision
	Since   time.Time // time of the last transition (slow start counts from here)
	Reason  string    // why it is down (or the last probe's note)
}

// Backend is one MTA in a View. Immutable but for Stats.
type Backend struct {
	Key
	AddrPort  netip.AddrPort
	Name      string // configured; "" when the backend has none (Label gives one to show)
	Weight    int    // configured
	MaxConn   int    // configured; the agent's maxconn:N overrides while reported
	Admin     Admin
	AgentAddr string // where the agent listens; "" when the pool has no agent
	// Identity is how the backend learns the client's address: none, v1, v2 (PROXY
	// protocol) or xclient (smtp mode only): its own identity setting, else its pool's.
	Identity string
	Health   Health
	Load     Load // from the agent, smoothed
	Stats    *Stats
}

// Pool is one pool in a View.
type Pool struct {
	Name      string
	Fallback  string
	Proxy     string // none | v1 | v2
	MaxConn   int
	SlowStart time.Duration
	QueueHigh int64 // 0 without an agent
	DiskHigh  int   // % of the queue volume (space or inodes) that saturates; 0 without an agent
	Backends  []*Backend
	// Chain is this pool followed by its fallback, the fallback's fallback and so on,
	// each once (built with the View, so the accept path does not walk names).
	Chain []*Pool
	Stats *PoolStats
	Spec  config.Pool // the pool as configured, for status output
}

// View is an immutable snapshot of every pool.
type View struct {
	Gen   uint64
	Pools map[string]*Pool
	Order []string // pool names in spec order
}

// Pool returns the named pool or nil.
func (v *View) Pool(name string) *Pool { return v.Pools[name] }

// Backend returns the backend with key k or nil.
func (v *View) Backend(k Key) *Backend {
	p := v.Pools[k.Pool]
	if p == nil {
		return nil
	}
	for _, b := range p.Backends {
		if b.Addr == k.Addr {
			return b
		}
	}
	return nil
}

// Label is what to call b on screens: its name, else its address.
func (b *Backend) Label() string {
	if b.Name != "" {
		return b.Name
	}
	return b.Addr
}

// Title names b in messages: pool/address, and its name when it has one ("mx/198.18.1.1:25
// (mta1)"), so an event can be found by either.
func (b *Backend) Title() string {
	if b.Name != "" {
		return b.Key.String() + " (" + b.Name + ")"
	}
	return b.Key.String()
}

// Usable reports whether b may take a new connection now, and if not, why.
func (b *Backend) Usable() (ok bool, why string) {
	switch {
	case b.Admin == Maint:
		return false, "maint"
	case b.Admin == Drain:
		return false, "drain"
	case !b.Health.Up:
		if b.Health.Reason != "" {
			return false, "down: " + b.Health.Reason
		}
		return false, "down"
	case b.Load.State == AgentDown:
		return false, "agent: down " + b.Load.Reason
	case b.Load.State == AgentMaint:
		return false, "agent: maint"
	case b.Load.State == AgentDrain:
		return false, "agent: drain"
	case b.Load.Saturated:
		if b.Load.SatReason != "" {
			return false, "saturated: " + b.Load.SatReason
		}
		return false, "saturated"
	case b.Weight == 0 || b.Load.Percent == 0:
		return false, "weight 0"
	}
	if mc := b.maxConn(); mc > 0 && b.Stats.Active.Load() >= int64(mc) {
		return false, "maxconn"
	}
	return true, ""
}

func (b *Backend) maxConn() int {
	if b.Load.MaxConn > 0 {
		return b.Load.MaxConn
	}
	return b.MaxConn
}

// EffectiveWeight is the weight selection uses at time now: the configured weight, times
// the agent's NN% and queue factor, times the slow-start ramp. It is 0 when the backend is
// not usable.
func (b *Backend) EffectiveWeight(now time.Time, slowStart time.Duration) float64 {
	if ok, _ := b.Usable(); !ok {
		return 0
	}
	return b.weight(now, slowStart)
}

// weight is the effective weight ignoring usability.
func (b *Backend) weight(now time.Time, slowStart time.Duration) float64 {
	w := float64(b.Weight) * b.Load.Factor
	if b.Load.Percent > 0 {
		w = w * float64(b.Load.Percent) / 100
	}
	return w * SlowStartFactor(now.Sub(b.Health.Since), slowStart)
}

// SlowStartFactor is the share of its weight a backend gets `up` after coming up: a linear
// ramp from 5% to 100% over slowStart (HAProxy's slowstart, with a floor so a backend that
// just came up gets some traffic at once).
func SlowStartFactor(up, slowStart time.Duration) float64 {
	if slowStart <= 0 || up >= slowStart {
		return 1
	}
	if up < 0 {
		up = 0
	}
	f := float64(up) / float64(slowStart)
	if f < 0.05 {
		f = 0.05
	}
	return f
}
