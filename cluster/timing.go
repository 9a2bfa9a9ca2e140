package cluster

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultFailoverBudget is the failover budget when Config.FailoverBudget is
// zero: a crashed node is declared dead within about a second.
const DefaultFailoverBudget = time.Second

// MinFailoverBudget is the smallest budget accepted. Below it the probe
// timeout would be under 10 ms, which a scheduler hiccup or a GC pause on a
// busy node exceeds, and nodes would flap.
const MinFailoverBudget = 140 * time.Millisecond

// Timings are the memberlist settings a failover budget maps onto.
type Timings struct {
	// ProbeInterval: every node probes one other node per interval.
	ProbeInterval time.Duration
	// ProbeTimeout: how long a probed node has to answer before indirect
	// probes (through other nodes) and a TCP fallback ping are tried.
	ProbeTimeout time.Duration
	// SuspicionMult: a suspected node is declared dead after
	// SuspicionMult x ProbeInterval (x log10(n) above 10 nodes) unless it
	// refutes. It is also the time a falsely suspected node has to refute.
	SuspicionMult int
	// GossipInterval: how often queued broadcasts (membership changes,
	// store deltas) are sent to GossipNodes random nodes.
	GossipInterval time.Duration
	// GossipNodes: fan-out of each gossip round.
	GossipNodes int
	// RetransmitMult: each broadcast is sent RetransmitMult x ceil(log10(n+1))
	// times.
	RetransmitMult int
	// PushPullInterval: full state exchange with one random node (the
	// anti-entropy that repairs lost deltas and heals partitions).
	PushPullInterval time.Duration
	// TCPTimeout bounds a push/pull or join stream.
	TCPTimeout time.Duration
}

// TimingsFor maps a failover budget onto memberlist timings.
//
// A crashed member is declared dead after: the wait until a survivor probes
// it (up to about 2 probe intervals with 3 members, as each survivor walks
// its shuffled member list one node per interval), one full probe round (a
// direct ping, indirect pings and a TCP ping, up to a probe interval), then
// the suspicion timeout (SuspicionMult x ProbeInterval), then one gossip
// hop. With SuspicionMult 2 that is about 5.5 probe intervals at worst
// (measured on loopback with 3 nodes: up to 5.5 at budget/6), so the probe
// interval is budget/7, which leaves the VIP takeover about a fifth of the
// budget:
//
//	budget 1s:   probe 143ms, timeout 71ms, suspicion 286ms, gossip 36ms
//	budget 0.3s: probe 43ms,  timeout 21ms, suspicion 86ms,  gossip 11ms
//
// The trade-off: a node must answer a probe within ProbeTimeout (budget/14)
// or get suspected, and must hear of the suspicion and refute it within
// 2 x ProbeInterval (budget/3.5) or be declared dead (its VIPs move away,
// then back when it refutes). A node stalled longer than that by CPU
// starvation, a long GC pause or a saturated link is treated as crashed.
// Smaller budgets also cost more probe traffic (one ping and ack per node
// per probe interval: about 7 per second per node at 1s, 23 at 0.3s).
//
// memberlist's own LAN defaults (probe 1s, timeout 500ms, suspicion 4) take
// about 5.4 s for 3 nodes.
func TimingsFor(budget time.Duration) Timings {
	if budget <= 0 {
		budget = DefaultFailoverBudget
	}
	budget = max(budget, MinFailoverBudget)
	probe := budget / 7
	gossip := min(max(probe/4, 10*time.Millisecond), 200*time.Millisecond)
	return Timings{
		ProbeInterval:    probe,
		ProbeTimeout:     probe / 2,
		SuspicionMult:    2,
		GossipInterval:   gossip,
		GossipNodes:      3,
		RetransmitMult:   4,
		PushPullInterval: 10 * time.Second,
		TCPTimeout:       3 * time.Second,
	}
}

// apply writes the timings into a memberlist config.
func (t Timings) apply(c *memberlist.Config) {
	c.ProbeInterval = t.ProbeInterval
	c.ProbeTimeout = t.ProbeTimeout
	c.SuspicionMult = t.SuspicionMult
	// With SuspicionMult 2 memberlist asks for no confirmations, so the
	// max multiplier never applies; keep it sane anyway.
	c.SuspicionMaxTimeoutMult = 4
	c.GossipInterval = t.GossipInterval
	c.GossipNodes = t.GossipNodes
	c.RetransmitMult = t.RetransmitMult
	c.PushPullInterval = t.PushPullInterval
	c.TCPTimeout = t.TCPTimeout
	// A node that crashed and came back on another address may reclaim
	// its name after this long.
	c.DeadNodeReclaimTime = max(2*t.SuspicionTimeout(), time.Second)
}

// SuspicionTimeout is the suspicion timeout for clusters of up to 10
// members: SuspicionMult x ProbeInterval.
func (t Timings) SuspicionTimeout() time.Duration {
	return time.Duration(t.SuspicionMult) * t.ProbeInterval
}
