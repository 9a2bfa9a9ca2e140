package cluster

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultFailoverBudget is the failover budget when Config.FailoverBudget is
// zero: a crashed node's VIPs move within about a second.
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
	// SuspicionMult: a suspected node is declared dead after between
	// SuspicionMult and 2 x SuspicionMult probe intervals (x log10(n) above 10
	// nodes; the more other members confirm the suspicion, the shorter) unless
	// it refutes. It is also the time a falsely suspected node has to refute.
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
// The VIP layer does not wait for memberlist: the fast heartbeat (heartbeat.go)
// gives a crashed member up within about 0.5 x budget. memberlist's verdict
// (membership, the store's fan-out) can therefore afford to be tolerant, and it
// must be: a false death moves VIPs too. So the probe interval is budget/7 (a
// failed probe is noticed fast), but the suspicion is Lifeguard's: SuspicionMult
// 4 expects two independent confirmations, and its timeout runs from
// SuspicionMaxTimeoutMult (2) x 4 probe intervals down to 4 probe intervals as
// confirmations arrive. With 3 members a crashed one is suspected by both
// others (one confirmation each): declared dead after the wait until it is
// probed, a probe round and about 5.5 probe intervals, about 1.1-1.4 x budget.
// A member that is only slow (its process starved) has 4 to 8 probe intervals
// (0.57-1.14 s at 1 s) to refute, instead of 2 (0.29 s), before it is declared
// dead:
//
//	budget 1s:   probe 143ms, timeout 71ms, suspicion 571ms-1.14s, gossip 36ms
//	budget 0.3s: probe 43ms,  timeout 21ms, suspicion 171-343ms,   gossip 11ms
//
// Measured on this 2-core box under load (three node processes, 4 busy loops
// and other work, 10 minutes): with SuspicionMult 2, memberlist alone declared
// healthy members dead up to 21 times.
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
		SuspicionMult:    4,
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
	// The suspicion timeout starts at twice SuspicionMult probe intervals and
	// shrinks towards SuspicionMult intervals as other members confirm.
	c.SuspicionMaxTimeoutMult = 2
	c.GossipInterval = t.GossipInterval
	c.GossipNodes = t.GossipNodes
	c.RetransmitMult = t.RetransmitMult
	c.PushPullInterval = t.PushPullInterval
	c.TCPTimeout = t.TCPTimeout
	// A node that crashed and came back on another address may reclaim
	// its name after this long.
	c.DeadNodeReclaimTime = max(2*t.SuspicionTimeout(), time.Second)
}

// SuspicionTimeout is the shortest suspicion timeout for clusters of up to
// 10 members (all confirmations in): SuspicionMult x ProbeInterval.
func (t Timings) SuspicionTimeout() time.Duration {
	return time.Duration(t.SuspicionMult) * t.ProbeInterval
}
