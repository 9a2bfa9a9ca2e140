package cluster

import (
	"bytes"
	"context"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// The fast heartbeat.
//
// memberlist's failure detector (probe, indirect probes, suspicion) is built to avoid false
// deaths in large clusters; with three nodes it needs several probe intervals to give a
// crashed node up, and at a 0.3 s budget its probe interval (43 ms) is so short that loaded
// nodes suspect each other. mxlb's VIPs need something blunter: every node sends every
// live member a one-packet heartbeat (memberlist's best-effort UDP, so it is encrypted with
// the cluster key like everything else) every HeartbeatInterval, and a member not heard
// from for HeartbeatTimeout is reported Reachable=false: the VIP layer treats it as dead
// at once, while memberlist membership (and the store) waits for its own verdict. When
// heartbeats come back the member is reachable again.
//
// The timings follow the failover budget: interval budget/10, timeout budget*4/10 (four
// missed heartbeats), so a crashed VIP holder is given up in 0.4 budget plus at most an
// interval, leaving the rest of the budget to take the address and announce it. The
// trade-off is the same as memberlist's, stated plainly: a node whose heartbeat sender is
// stalled for more than 0.3 budget (CPU starvation, a saturated link) loses its VIPs to
// another node, and gets them back only by the VIP rules (sticky: it does not, unless
// preempt or the new holder fails).

// msgHeartbeat is a heartbeat: one byte of name length, the sender's name, then its
// current metadata (JSON, as published). Carrying the metadata keeps every node's view of
// who holds which VIP and who is drained as fresh as the heartbeat: after a partition
// heals, a node learns the other side's claims with the first heartbeat, before it could
// take a VIP on stale information (memberlist re-syncs metadata only at its next
// push/pull).
const msgHeartbeat byte = 5

// heartbeatTimings derives the heartbeat from a failover budget.
func heartbeatTimings(budget time.Duration) (interval, timeout time.Duration) {
	if budget <= 0 {
		budget = DefaultFailoverBudget
	}
	budget = max(budget, MinFailoverBudget)
	return max(budget/10, 10*time.Millisecond), budget * 4 / 10
}

// heartbeatMsg encodes this node's heartbeat.
func (n *Node) heartbeatMsg() []byte {
	name := n.cfg.Name[:min(len(n.cfg.Name), 255)]
	msg := append([]byte{msgHeartbeat, byte(len(name))}, name...)
	if m := n.meta.Load(); m != nil {
		msg = append(msg, *m...)
	}
	return msg
}

// heardHeartbeat handles a heartbeat: the member is reachable, and its metadata is what
// it says now.
func (n *Node) heardHeartbeat(buf []byte) {
	if len(buf) < 2 || len(buf) > 2+255+memberlist.MetaMaxSize {
		return
	}
	l := int(buf[1])
	if len(buf) < 2+l {
		return
	}
	name := string(buf[2 : 2+l])
	var meta []byte
	if rest := buf[2+l:]; len(rest) > 0 {
		meta = slices.Clone(rest)
	}
	now := time.Now()
	n.memMu.Lock()
	m := n.members[name]
	flip, changed := false, false
	if m != nil && !m.Local {
		m.lastHeard = now
		flip = !m.Reachable && m.Alive
		if flip {
			m.Reachable = true
		}
		if meta != nil && m.Alive && !bytes.Equal(meta, m.Meta) {
			m.Meta, changed = meta, true
		}
	}
	n.memMu.Unlock()
	if flip {
		n.log.Info("member reachable again (heartbeat)", "member", name)
	}
	if flip || changed {
		n.notifyMembers()
	}
}

// heartbeatLoop sends heartbeats and marks members that stopped sending them unreachable.
func (n *Node) heartbeatLoop(ctx context.Context, ml *memberlist.Memberlist) {
	interval, timeout := heartbeatTimings(n.cfg.FailoverBudget)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		msg := n.heartbeatMsg()
		for _, to := range n.aliveOthers() {
			// Best effort: a lost heartbeat is what the timeout is for.
			_ = ml.SendBestEffort(to, msg)
		}
		now := time.Now()
		var lost []string
		n.memMu.Lock()
		for _, m := range n.members {
			if m.Local || !m.Alive || !m.Reachable {
				continue
			}
			// A member that just came alive gets a full timeout from then.
			last := m.lastHeard
			if m.Since.After(last) {
				last = m.Since
			}
			if now.Sub(last) > timeout {
				m.Reachable = false
				lost = append(lost, m.Name)
			}
		}
		n.memMu.Unlock()
		for _, name := range lost {
			n.log.Warn("member unreachable: no heartbeat", "member", name, "timeout", timeout)
		}
		if len(lost) > 0 {
			n.notifyMembers()
		}
	}
}
