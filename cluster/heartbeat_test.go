package cluster

import (
	"testing"
	"time"
)

func TestHeartbeatTimings(t *testing.T) {
	for _, c := range []struct{ budget, interval, timeout time.Duration }{
		{time.Second, 100 * time.Millisecond, 400 * time.Millisecond},
		{300 * time.Millisecond, 30 * time.Millisecond, 120 * time.Millisecond},
		{0, 100 * time.Millisecond, 400 * time.Millisecond},
		{10 * time.Millisecond, 14 * time.Millisecond, 56 * time.Millisecond}, // MinFailoverBudget
	} {
		i, to := heartbeatTimings(c.budget)
		if i != c.interval || to != c.timeout {
			t.Errorf("budget %v: interval %v timeout %v, want %v %v", c.budget, i, to, c.interval, c.timeout)
		}
	}
}

// TestHeartbeatMarksSilentMemberUnreachable: a member cut off is unreachable after the
// heartbeat timeout (before or regardless of memberlist's verdict), and reachable again
// when its heartbeats come back.
func TestHeartbeatMarksSilentMemberUnreachable(t *testing.T) {
	netw := newTestNet()
	nodes := startNodes(t, 3, clusterOpts{netw: netw, budget: time.Second})
	waitMembers(t, nodes, 3)
	reachable := func(from *tnode, name string) bool {
		for _, m := range from.Members() {
			if m.Name == name {
				return m.Alive && m.Reachable
			}
		}
		return false
	}
	waitFor(t, 2*time.Second, "all reachable", func() bool {
		return reachable(nodes[0], nodes[2].Name()) && reachable(nodes[1], nodes[2].Name())
	})
	cut := time.Now()
	netw.partition(map[string]int{nodes[2].tr.addr: 1})
	waitFor(t, 3*time.Second, "node 3 unreachable from 1 and 2", func() bool {
		return !reachable(nodes[0], nodes[2].Name()) && !reachable(nodes[1], nodes[2].Name())
	})
	t.Logf("cut-off member unreachable after %v (heartbeat timeout 400ms, interval 100ms)", time.Since(cut).Round(time.Millisecond))
	netw.heal()
	waitFor(t, 10*time.Second, "node 3 reachable again", func() bool {
		return reachable(nodes[0], nodes[2].Name()) && reachable(nodes[1], nodes[2].Name())
	})
}
